"""Resume never loses data: without (or with an unreadable) last.pt it resumes from the newest
usable epoch_N.pt; with no usable checkpoint it refuses and deletes nothing."""

import os

import pytest

from e2mc.errors import CheckpointError, ConfigError
from e2mc.train.loop import Trainer
from e2mc.train.run import read_metrics

from .conftest import comparable, same_weights, tiny_config, weights


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 3-epoch run and the same run stopped after epoch 2 (both tiny)."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fallback")
    Trainer(tiny_config(root / "full"), quiet=True).fit()
    Trainer(tiny_config(root / "two", "train.epochs=2"), quiet=True).fit()  # constant LR: may be extended
    return root


def _snapshot(run):
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _copy(runs, tmp_path):
    import shutil

    shutil.copytree(runs / "two", tmp_path / "r")
    return tmp_path / "r"


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
def test_resume_from_the_newest_epoch_file(runs, tmp_path, damage, capsys):
    run = _copy(runs, tmp_path)
    last = run / "checkpoints" / "last.pt"
    if damage == "missing":
        last.unlink()
    elif damage == "truncated":
        last.write_bytes(last.read_bytes()[:1000])
    else:
        last.write_bytes(b"not a checkpoint")
    os.remove(run / "checkpoints" / "epoch_0002.pt")  # newest left: epoch_0001.pt (step 4)
    (run / "checkpoints" / "epoch_0002.pt").write_bytes(b"\0" * 10)  # a corrupt newer one is skipped
    Trainer(tiny_config(run, "out.resume=true"), quiet=False).fit()
    err = capsys.readouterr().err
    assert f"resuming from {run / 'checkpoints' / 'epoch_0001.pt'} instead" in err
    assert "epoch_0002.pt is unreadable" in err and "resumed from" in err and "epoch 1, step 4" in err
    assert same_weights(weights(runs / "full"), weights(run))  # the lost epoch is simply redone
    assert comparable(read_metrics(run / "metrics.csv")) == comparable(read_metrics(runs / "full" / "metrics.csv"))


def test_no_usable_checkpoint_deletes_nothing(runs, tmp_path):
    run = _copy(runs, tmp_path)
    for p in (run / "checkpoints").glob("*.pt"):
        p.write_bytes(b"garbage")
    before = _snapshot(run)
    with pytest.raises(
        CheckpointError,
        match=r"no usable checkpoint.*last.pt is unreadable.*epoch_0002.pt "
        r"is unreadable.*nothing was changed.*out.overwrite=true",
    ):
        Trainer(tiny_config(run, "out.resume=true"), quiet=True)
    for p in (run / "checkpoints").glob("epoch_*.pt"):
        p.unlink()
    with pytest.raises(CheckpointError, match=r"no usable checkpoint.*last.pt is unreadable"):  # alone
        Trainer(tiny_config(run, "out.resume=true"), quiet=True)
    (run / "checkpoints" / "last.pt").unlink()
    before = _snapshot(run)
    with pytest.raises(
        ConfigError,
        match=r"holds config.yaml, metrics.csv but no checkpoint.*not this run's.*"
        r"nothing was changed.*out.overwrite=true.*another --out",
    ):
        Trainer(tiny_config(run, "out.resume=true", "optim.lr=0.07"), quiet=True)  # another run's settings
    assert _snapshot(run) == before  # metrics.csv and config.yaml untouched
    metrics, config = (run / "metrics.csv").read_bytes(), (run / "config.yaml").read_bytes()
    Trainer(tiny_config(run, "out.resume=true", "train.max_steps=1"), quiet=True).fit()  # this run: starts again
    kept = list((run / "stopped").iterdir())
    assert len(kept) == 1 and (kept[0] / "metrics.csv").read_bytes() == metrics  # set aside, not deleted
    assert (kept[0] / "config.yaml").read_bytes() == config
    assert [r["step"] for r in read_metrics(run / "metrics.csv") if r["phase"] != "guard"] == ["0", "1"]
    Trainer(tiny_config(run, "out.overwrite=true", "train.max_steps=1"), quiet=True).fit()  # asked for: replaced
    assert [r["step"] for r in read_metrics(run / "metrics.csv") if r["phase"] != "guard"] == ["0", "1"]


def test_resume_drops_rows_of_a_killed_attempt(runs, tmp_path):
    """Rows written after the checkpoint (and a half row cut by a kill) are dropped on resume."""
    run = _copy(runs, tmp_path)
    with open(run / "metrics.csv", "a") as f:
        f.write("1.0,2,9,train,1,2,3\n1.0,2,10,tra")  # a killed attempt's row and a half row
    Trainer(tiny_config(run, "out.resume=true"), quiet=True).fit()
    got, want = (comparable(read_metrics(r / "metrics.csv")) for r in (run, runs / "full"))
    # the 2-epoch run was also checked by the collapse guard after its last step (8): a row the
    # uninterrupted run has not; every other row is the same
    extra = [r for r in got if r not in want]
    assert [(r["phase"], r["step"]) for r in extra] == [("guard", "8")] and [r for r in got if r not in extra] == want


def test_metrics_log_cut_by_rows_or_by_step(tmp_path):
    """keep_rows (what checkpoints store) wins; checkpoints of older e2mc versions cut by step."""
    from e2mc.train.run import MetricsLog

    path = tmp_path / "metrics.csv"
    text = "wall_time,epoch,step,phase\r\n1,0,0,init\r\n2,0,1,train\r\n3,0,2,train\r\n4,1,2,epoch\r\n5,1,3,train\r\n6,1,4,tr"
    for kw, steps in (
        ({"keep_rows": 3}, ["0", "1", "2"]),
        ({"keep_step": 2}, ["0", "1", "2", "2"]),
        ({}, ["0", "1", "2", "2", "3"]),
    ):
        path.write_text(text, newline="")
        log = MetricsLog(path, **kw)
        assert [r["step"] for r in read_metrics(path)] == steps and log.rows == len(steps)
        log.write({"epoch": 1, "step": 9, "phase": "train"}, terms=[])
        assert read_metrics(path)[-1]["step"] == "9" and log.rows == len(steps) + 1
