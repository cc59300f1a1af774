"""Advice in e2mc's messages can be followed as written (issue 12, "Hints that lead nowhere").

- every ``--flag`` written in e2mc's source text exists in e2mc's parser (or in torchrun's, for
  text that talks about torchrun), and every config key named in an error or warning exists;
- ``--data-root`` / ``--download`` reach torchvision's dataset class (faked here: no network),
  from ``e2mc evaluate``, ``e2mc compare`` and ``e2mc pretrain``;
- ``--ks`` reaches kNN, and a k above the training size is clipped with a warning.
"""

import argparse
import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest

import e2mc
from e2mc.cli import build_parser, main
from e2mc.config import OPTION_OWNERS, RunConfig
from e2mc.errors import DataError

SRC = Path(e2mc.__file__).parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")
CONFIG_KEY = re.compile(r"(?<![\w./])(data|model|method|addon|optim|train|out)\.([a-z_]+)\b")
FILE_SUFFIXES = {"pt", "pth", "tar", "json", "yaml", "csv", "safetensors"}  # model.pth is a file name


def _options(parser) -> set[str]:
    out = set()
    for action in parser._actions:
        out.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= _options(sub)
    return out


def _strings(node):
    """String constants inside ``node`` (f-string parts included)."""
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _messages(tree):
    """Strings of ``raise ...`` statements and of ``warnings.warn`` / ``log.warning`` calls."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            yield node.lineno, " ".join(_strings(node.exc))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("warn", "warning")
        ):
            yield node.lineno, " ".join(_strings(node))


def test_every_flag_and_config_key_in_the_source_exists():
    from torch.distributed.run import get_args_parser

    ours, torchrun = _options(build_parser()), _options(get_args_parser())
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for text in _strings(tree):
            known = ours | torchrun if "torchrun" in text else ours
            bad += [f"{path.name}: {f}" for f in FLAG.findall(text) if f not in known]
        cfg = RunConfig()
        for line, text in _messages(tree):
            bad += [
                f"{path.name}:{line}: {m.group()}"
                for m in CONFIG_KEY.finditer(text)
                if m.group(2) not in FILE_SUFFIXES
                and not hasattr(getattr(cfg, m.group(1)), m.group(2))
                and not (m.group(1) == "method" and m.group(2) in OPTION_OWNERS)  # another method's option
            ]
    assert not bad, bad


class FakeCIFAR10:
    """Stands in for ``torchvision.datasets.CIFAR10``: records its arguments; "downloads" on request."""

    calls: list = []
    downloaded: set = set()

    def __init__(self, root, train=True, transform=None, target_transform=None, download=False):
        FakeCIFAR10.calls.append({"root": str(root), "train": train, "download": download})
        if download:
            FakeCIFAR10.downloaded.add(str(root))
        if str(root) not in FakeCIFAR10.downloaded:  # torchvision's own message and exception type
            raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
        n = 30 if train else 12
        rng = np.random.default_rng(int(train))
        self.targets = [i % 3 for i in range(n)]
        self.data = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        self.classes = ["airplane", "automobile", "bird"]


@pytest.fixture
def fake_cifar(monkeypatch, tmp_path):
    import torchvision.datasets

    FakeCIFAR10.calls, FakeCIFAR10.downloaded = [], set()
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    monkeypatch.setenv("E2MC_CACHE", str(tmp_path / "cache"))
    return FakeCIFAR10


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


EVAL = ["--dataset", "cifar10", "--protocols", "knn", "--seeds", "0", "--device", "cpu", "--batch-size", "64"]


def test_missing_cifar_advice_is_runnable(fake_cifar, tmp_path, capsys):
    data = tmp_path / "data"
    ckpt = "random:resnet_mini:8-16-32"
    rc, _, err = _run(capsys, "evaluate", ckpt, *EVAL, "--data-root", data)
    assert rc == 2 and "--download" in err and "--data-root" in err and "Traceback" not in err
    assert fake_cifar.calls == [{"root": str(data), "train": True, "download": False}]
    # follow the advice as written: add --download
    with pytest.warns(UserWarning, match="k=500 > the 30 training samples; using k=30"):
        rc, out, err = _run(
            capsys, "evaluate", ckpt, *EVAL, "--data-root", data, "--download", "--ks", "1,500", "--json"
        )
    assert rc == 0, err
    assert fake_cifar.calls[1:] == [
        {"root": str(data), "train": True, "download": True},
        {"root": str(data), "train": False, "download": True},
    ]
    res = json.loads(out)
    assert set(res["knn"]) == {"top1_k1", "top1_k30", "uar_k1", "uar_k30"} and res["meta"]["n_train"] == 30


def test_compare_passes_data_root_download_and_ks(fake_cifar, tmp_path, capsys):
    from e2mc.models.checkpoints import load_model
    from e2mc.models.export import export_model

    model, report = load_model("random:resnet_mini:8-16-32", method="vicreg")
    ckpt = export_model(model, report, tmp_path / "a.pt", "e2mc")
    data = tmp_path / "d2"
    rc, out, err = _run(
        capsys, "compare", ckpt, f"b={ckpt}", *EVAL, "--data-root", data, "--download", "--ks", "2,5", "--json"
    )
    assert rc == 0, err
    assert {(c["root"], c["download"]) for c in fake_cifar.calls} == {(str(data), True)}
    metrics = {r["metric"] for r in json.loads(out)["rows"]}
    assert metrics == {"knn/top1_k2", "knn/top1_k5", "knn/uar_k2", "knn/uar_k5"}


def test_training_commands_pass_data_root_and_download(fake_cifar, tmp_path, capsys, monkeypatch):
    import e2mc.train.loop as loop

    seen = {}

    def fake_build(spec, split, **kw):
        seen.update(spec=spec, split=split, **kw)
        raise DataError("stop here")

    monkeypatch.setattr(loop, "build_dataset", fake_build)
    rc, _, err = _run(
        capsys,
        "pretrain",
        "--dataset",
        "cifar10",
        "--data-root",
        tmp_path / "d",
        "--download",
        "--out",
        tmp_path / "run",
        "--device",
        "cpu",
    )
    assert rc == 2 and "stop here" in err
    assert (seen["spec"], seen["root"], seen["download"]) == ("cifar10", str(tmp_path / "d"), True)
    rc, _, err = _run(capsys, "pretrain", "--dataset", "cifar10", "--out", tmp_path / "run2", "--device", "cpu")
    assert seen["download"] is False and seen["root"] is None
