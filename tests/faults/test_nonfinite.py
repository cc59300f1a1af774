"""No checkpoint holding NaN/Inf parameters, buffers or optimiser state is ever written, and
TrainingDiverged names a checkpoint that really is good (or says there is none)."""

import math

import pytest
import torch

from e2mc.errors import TrainingDiverged
from e2mc.train.loop import Trainer
from e2mc.train.run import load_checkpoint, nonfinite

from .conftest import SETS, cli, one_line_error, tiny_config

# the collapse guard off: these check the last line of defence (no non-finite state on disk, the
# error naming a good checkpoint); with the guard on, a divergence restores its best checkpoint
# (tests/train/test_guard.py)
OFF = "train.guard.action=off"


def _all_finite_on_disk(run):
    """Every checkpoint file in the run folder is finite (checked tensor by tensor, not with nonfinite)."""
    for p in (run / "checkpoints").glob("*.pt"):
        st = load_checkpoint(p)
        for part in (st["model"], st["optimizer"]["state"]):
            flat = part.values() if part is st["model"] else [v for s in part.values() for v in s.values()]
            for v in flat:
                if isinstance(v, torch.Tensor) and v.is_floating_point():
                    assert torch.isfinite(v).all(), p
    return True


def test_nonfinite_finds_each_kind_of_value():
    state = {
        "model": {"a": torch.ones(3), "n": torch.tensor(3)},
        "optimizer": {"state": {0: {"m": torch.zeros(2)}}, "param_groups": [{"lr": 0.1}]},
        "scaler": {},
        "swav_queue": None,
    }
    assert nonfinite(state) is None
    for where, bad in ((("model", "a"), math.inf), (("optimizer", "state", 0, "m"), math.nan)):
        st = {
            **state,
            "model": {k: v.clone() for k, v in state["model"].items()},
            "optimizer": {"state": {0: {"m": torch.zeros(2)}}, "param_groups": [{"lr": 0.1}]},
        }
        obj = st
        for k in where[:-1]:
            obj = obj[k]
        obj[where[-1]][1] = bad
        assert nonfinite(st) == ".".join(map(str, where))
    st = {**state, "optimizer": {"state": {}, "param_groups": [{"lr": math.nan}]}}
    assert nonfinite(st) == "optimizer.param_groups.0.lr"
    assert nonfinite({"model": {"h": torch.full((4,), 6e4, dtype=torch.float16)}}) is None  # large, finite


def test_nan_lr_one_step_writes_nothing(tmp_path):
    """lr=nan (set on the optimiser, whatever the config validation says) and max_steps=1: the loss of
    step 1 is finite but the weights are not; the run must not end with NaN weights on disk."""
    run = tmp_path / "r"
    t = Trainer(tiny_config(run, "train.max_steps=1", OFF), quiet=True)
    t.optimizer.param_groups[0]["lr"] = math.nan
    with pytest.raises(TrainingDiverged, match=r"not finite at step 1.*nothing was written.*no good checkpoint"):
        t.fit()
    assert not list((run / "checkpoints").iterdir())


@pytest.mark.parametrize("poison", ["buffer", "optimizer"])
def test_poisoned_state_after_a_good_checkpoint(tmp_path, poison):
    """A BN running variance or a momentum buffer turns Inf/NaN at the end of epoch 1 (the loss stays finite):
    the epoch-1 checkpoint is refused and the error names last.pt of epoch 0, which is finite."""
    run = tmp_path / "r"
    t = Trainer(tiny_config(run, "optim.name=sgd", "optim.momentum=0.9", OFF), quiet=True)
    real = t.train_step

    def step(images, **kw):
        out = real(images, **kw)
        if t.global_step == 7:  # the last step of epoch 1: its loss is still finite
            if poison == "buffer":
                t.model.backbone.bn1.running_var[0] = math.inf
            else:
                next(iter(t.optimizer.state.values()))["momentum_buffer"].view(-1)[0] = math.nan
        return out

    t.train_step = step
    name = "running_var" if poison == "buffer" else "momentum_buffer"
    with pytest.raises(
        TrainingDiverged, match=rf"{name}.*not finite.*last good checkpoint is {run}/checkpoints/last.pt"
    ):
        t.fit()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4 and _all_finite_on_disk(run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_0001.pt", "last.pt"]


@pytest.mark.parametrize("optim", [("sgd", "1e30"), ("lars", "1e4")])
def test_huge_lr_diverges_without_a_bad_checkpoint(tmp_path, optim):
    """Absurd LRs: the run stops with TrainingDiverged, and every checkpoint on disk is finite AND
    still gives finite eval-mode features (LARS 1e4 first makes 1e15-scale weights that are finite
    but break evaluate). The LR is set past the config's range check (lr <= 1000): the guard must
    hold on its own."""
    run = tmp_path / "r"
    cfg = tiny_config(run, f"optim.name={optim[0]}", "optim.batch_size=64", OFF)
    cfg.optim.lr = float(optim[1])
    with pytest.raises(TrainingDiverged, match=r"training diverged.*(last good checkpoint is|no good checkpoint)"):
        Trainer(cfg, quiet=True).fit()
    assert _all_finite_on_disk(run)
    from e2mc.data import build_dataset, eval_transform
    from e2mc.models.model import SSLModel

    ds = build_dataset("digits", "train", image_size=8, limit=8)
    x = eval_transform(torch.stack([ds[i][0] for i in range(8)]), ds.info, 8)
    for p in (run / "checkpoints").glob("*.pt"):
        st = load_checkpoint(p)
        m = SSLModel.build(st["method"], st["arch"], cifar_stem=st["cifar_stem"], **st["head_sizes"])
        m.load_state_dict(st["model"])
        with torch.no_grad():
            assert torch.isfinite(m.eval().backbone(x)).all(), p


def test_cli_lr_inf_exits_2_without_a_checkpoint(tmp_path):
    """`optim.lr=inf` (what `--lr inf` sets): one line, exit 2 (a config error once ranges are validated, else the guard)."""
    code, _, err = cli(
        "pretrain", *SETS, "--set", "train.max_steps=2", "--set", "optim.lr=inf", "--out", tmp_path / "r"
    )
    one_line_error(code, err)
    assert not list((tmp_path / "r").glob("checkpoints/*.pt"))
