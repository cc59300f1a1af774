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
