"""TensorBoard logging, where the optional `tensorboard` package is installed."""

import pytest

from e2mc.cli import main


def test_tensorboard_scalars_are_written(tmp_path):
    pytest.importorskip("tensorboard", reason="optional extra e2mc[tensorboard] not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sets = [
        "data.image_size=8",
        "data.limit=128",
        "optim.batch_size=64",
        "train.probe_size=64",
        "train.max_steps=2",
        "train.log_every=1",
        "train.tensorboard=true",
    ]
    argv = ["pretrain", "--recipe", "digits_vicreg_pretrain", "--out", str(tmp_path / "run")]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/lr", "init/rankme"} <= set(tags)
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]


def test_a_resume_hides_the_steps_logged_after_its_checkpoint(tmp_path):
    """A run killed after its step-2 checkpoint had logged steps 3-4 to TensorBoard; the resumed run
    logs them again. metrics.csv is cut back to the checkpoint; TensorBoard showed both (a new
    user's trial): the resumed writer purges the steps after its checkpoint."""
    pytest.importorskip("tensorboard", reason="optional extra e2mc[tensorboard] not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    sets = ["data.image_size=8", "data.limit=128", "optim.batch_size=64", "train.probe_size=64"]
    sets += ["train.log_every=1", "train.tensorboard=true"]
    argv = ["pretrain", "--recipe", "digits_vicreg_pretrain", "--out", str(tmp_path / "run")]
    args = [a for s in sets for a in ("--set", s)]
    assert main(argv + args + ["--set", "train.max_steps=2"]) == 0
    stale = SummaryWriter(str(tmp_path / "run" / "tb"))  # what the killed attempt logged after the checkpoint
    for step in (3, 4):
        stale.add_scalar("train/loss", 1e6, step)
    stale.close()
    assert main(argv + args + ["--set", "train.max_steps=4", "--resume"]) == 0
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2, 3, 4] and all(e.value < 1e6 for e in losses)
