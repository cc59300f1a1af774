"""Issue 11 item 3: every numeric config value is range-checked at config time (one-line error)."""

import dataclasses
import math
import typing

import pytest

from e2mc.cli import main
from e2mc.config import RANGES, RunConfig, load_config
from e2mc.errors import ConfigError
from e2mc.methods import METHODS

BAD = [  # (override, the range phrase the message must give)
    ("optim.lr=nan", "> 0"),
    ("optim.lr=.inf", "> 0"),
    ("optim.lr=-.inf", "> 0"),
    ("optim.lr=-0.1", "> 0"),
    ("optim.lr=0", "> 0"),
    ("optim.lr=1e39", "<= 1000"),
    ("optim.weight_decay=-1", ">= 0"),
    ("optim.weight_decay=nan", ">= 0"),
    ("optim.momentum=-0.5", ">= 0"),
    ("optim.momentum=1.5", "< 1"),
    ("optim.warmup_epochs=-1", ">= 0"),
    ("optim.batch_size=0", ">= 1"),
    ("optim.base_batch=-8", ">= 1"),
    ("train.grad_clip=-1", ">= 0"),
    ("train.grad_clip=nan", ">= 0"),
    ("train.grad_clip=.inf", ">= 0"),
    ("train.epochs=-3", ">= 1"),
    ("train.epochs=0", ">= 1"),
    ("train.max_steps=0", ">= 1"),
    ("train.max_steps=-5", ">= 1"),
    ("train.seed=-1", ">= 0"),
    ("train.log_every=0", ">= 1"),
    ("train.checkpoint_every_epochs=0", ">= 1"),
    ("train.head_warmup_steps=-1", ">= 0"),
    ("train.probe_size=-2", ">= 0"),
    ("data.limit=0", ">= 1"),
    ("data.image_size=0", ">= 8"),
    ("data.num_workers=-1", ">= 0"),
    ("addon.entropy_weight=-1", ">= 0"),
    ("addon.entropy_weight=nan", ">= 0"),
    ("addon.cov_weight=.inf", ">= 0"),
    ("addon.m=0", ">= 1"),
    ("method.temperature=0", "> 0"),
    ("method.temperature=nan", "> 0"),
    ("method.sinkhorn_epsilon=-0.05", "> 0"),
    ("method.sim_weight=-25", ">= 0"),
    ("method.var_weight=nan", ">= 0"),
    ("method.cov_weight=-1", ">= 0"),
    ("method.sinkhorn_iterations=0", ">= 1"),
    ("method.queue_length=-1", ">= 0"),
]


@pytest.mark.parametrize("override,phrase", BAD)
def test_out_of_range_value_is_one_line_naming_key_value_and_range(override, phrase):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(key + "=") and phrase in msg, msg


@pytest.mark.parametrize("override,phrase", BAD[:6])
def test_out_of_range_in_a_yaml_file(tmp_path, override, phrase):
    key, value = override.split("=")
    section, name = key.split(".")
    path = tmp_path / "c.yaml"
    path.write_text(f"{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError, match=phrase.replace(">", r"\>")):
        load_config(path)


def test_edge_values_that_are_valid():
    cfg = load_config(
        None,
        [
            "train.grad_clip=0",
            "train.grad_clip=null",
            "optim.lr=1000",
            "optim.weight_decay=0",
            "optim.momentum=0",
            "data.num_workers=0",
            "train.seed=0",
            "addon.m=null",
        ],
    )
    assert cfg.train.grad_clip is None and cfg.optim.lr == 1000.0
    assert load_config(None, ["train.grad_clip=0"]).train.grad_clip == 0.0  # 0 = off, like null


def test_infinite_integer_is_a_config_error_not_overflow():
    with pytest.raises(ConfigError, match="train.epochs: cannot read inf as int"):
        load_config(None, ["train.epochs=.inf"])


def test_a_config_built_in_code_is_checked_too():
    cfg = RunConfig()
    cfg.optim.lr = float("nan")
    with pytest.raises(ConfigError, match=r"optim.lr=nan is out of range"):
        load_config(cfg)


def test_every_numeric_field_has_a_range():
    numeric = set()

    def walk(cls, prefix):  # nested sections too (train.guard.*)
        for name, ftp in typing.get_type_hints(cls).items():
            if dataclasses.is_dataclass(ftp):
                walk(ftp, f"{prefix}{name}.")
                continue
            args = set(typing.get_args(ftp)) - {type(None)} or {ftp}
            if args & {int, float} and prefix:
                numeric.add(f"{prefix}{name}")

    walk(RunConfig, "")
    # and every method's numeric options (``method.<key>``, declared in its file)
    options = {f"method.{k}": o.default for m in METHODS.values() for k, o in m.options.items()}
    numeric |= {k for k, d in options.items() if isinstance(d, (int, float)) and not isinstance(d, bool)}
    assert numeric == set(RANGES)
    defaults = RunConfig()  # and every default is inside its own range
    for key, rng in RANGES.items():
        value = defaults
        for part in key.split("."):
            value = options[key] if key in options else getattr(value, part)
        assert rng.ok(value), key
    assert not RANGES["optim.lr"].ok(math.nan) and not RANGES["train.grad_clip"].ok(-1.0)


@pytest.mark.parametrize(
    "argv",
    [
        ["--epochs", "-3"],
        ["--lr", "nan"],
        ["--lr", "inf"],
        ["--lr", "-0.1"],
        ["--lr", "1e39"],
        ["--set", "train.grad_clip=-1"],
        ["--set", "optim.weight_decay=-1", "--set", "optim.name=adamw"],
        ["--batch-size", "0"],
        ["--seed", "-1"],
    ],
)
def test_cli_out_of_range_exits_2_with_one_line(tmp_path, capsys, argv):
    code = main(["pretrain", "--out", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "out of range" in err
    assert not (tmp_path / "run").exists()  # rejected before anything was written
