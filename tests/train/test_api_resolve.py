"""The Python API resolves a run as `e2mc pretrain/continue` does (train.api.resolve_config):
auto-resume, resume with the run's own config, the checkpoint's own method. No CLI here."""

import pytest
import torch

from e2mc.errors import ConfigError
from e2mc.train.api import build_config, continue_training, pretrain
from e2mc.train.run import load_checkpoint, read_metrics

TINY = {
    "data__dataset": "digits",
    "data__image_size": 8,
    "data__limit": 128,
    "model__init": "random:resnet_mini:8-16-32",
    "optim__batch_size": 64,
    "optim__lr": 0.05,
    "optim__schedule": "constant",
    "train__probe_size": 16,
    "train__tensorboard": False,
    "train__device": "cpu",
    "train__deterministic": True,
}


def test_auto_resume_starts_then_resumes_exactly(tmp_path):
    """auto_resume=True starts a run in an empty folder, and later resumes it: two calls of 1 then
    2 steps give the weights of one uninterrupted 2-step run (without auto_resume the second call
    is refused: the folder holds a run)."""
    run = tmp_path / "auto"
    assert pretrain(None, auto_resume=True, **TINY, train__max_steps=1, out__dir=str(run)) == run
    with pytest.raises(ConfigError, match="already holds a run"):
        pretrain(None, **TINY, train__max_steps=2, out__dir=str(run))
    pretrain(None, auto_resume=True, **TINY, train__max_steps=2, out__dir=str(run))
    resumed = load_checkpoint(run / "checkpoints" / "last.pt")
    whole = load_checkpoint(
        pretrain(None, **TINY, train__max_steps=2, out__dir=str(tmp_path / "whole")) / "checkpoints" / "last.pt"
    )
    assert resumed["step"] == whole["step"] == 2
    assert resumed["model"].keys() == whole["model"].keys()
    for k, v in whole["model"].items():
        assert torch.equal(resumed["model"][k], v), k
    assert [r["step"] for r in read_metrics(run / "metrics.csv") if r["phase"] == "train"] == ["1", "2"]


def test_resume_without_a_config_uses_the_runs_own(tmp_path):
    run = tmp_path / "r"
    pretrain(None, **TINY, train__max_steps=1, out__dir=str(run))
    cfg = build_config("pretrain", None, out__dir=str(run), out__resume=True)  # nothing else given
    assert cfg.data.image_size == 8 and cfg.data.limit == 128 and cfg.out.resume  # the stored config's
    assert build_config("pretrain", None, auto_resume=True, out__dir=str(run)).data.image_size == 8
    with pytest.raises(ConfigError, match="holds no run to resume"):
        build_config("pretrain", None, out__dir=str(tmp_path / "empty"), out__resume=True)
    with pytest.raises(ConfigError, match="needs the run folder"):
        build_config("pretrain", None, auto_resume=True)
    # auto-resume in an empty folder starts: the defaults, not a stored config
    assert build_config("pretrain", None, auto_resume=True, out__dir=str(tmp_path / "new")).data.image_size is None


def test_continue_picks_the_checkpoints_method(tmp_path):
    start = pretrain(None, **TINY, method__name="simsiam", train__max_steps=1, out__dir=str(tmp_path / "s"))
    ckpt = str(start / "checkpoints" / "last.pt")
    assert build_config("continue", None, model__init=ckpt).method.name == "simsiam"  # default: vicreg
    assert build_config("continue", None, model__init=ckpt, method__name="vicreg").method.name == "vicreg"
    assert build_config("continue", "digits_vicreg_e2mc", model__init=ckpt).method.name == "vicreg"
    over = {k: v for k, v in TINY.items() if k != "model__init"}
    run = continue_training(model__init=ckpt, **over, train__max_steps=1, out__dir=str(tmp_path / "c"))
    done = load_checkpoint(run / "checkpoints" / "last.pt")
    assert done["method"] == "simsiam" and set(done["head_sizes"]) == {"proj_hidden", "proj_dim", "pred_hidden"}
    with pytest.raises(ConfigError, match="needs a checkpoint"):
        continue_training(out__dir=str(tmp_path / "x"))
    for source in (None, "digits_vicreg_e2mc"):  # checked before the run folder is made
        with pytest.raises(ConfigError, match="missing.pth not found"):
            continue_training(source, model__init=str(tmp_path / "missing.pth"), out__dir=str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
