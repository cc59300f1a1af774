"""train.run.RunFolder on its own: the run folder needs no trainer (it is given what it writes)."""

import pytest
import torch
import yaml

from e2mc.errors import RunLocked
from e2mc.train.calibrate import CALIBRATION_BATCHES
from e2mc.train.distributed import DistInfo
from e2mc.train.loop import Trainer
from e2mc.train.run import RunFolder, read_metrics


def _state(step: int, rows: int) -> dict:
    return {"format": "e2mc", "step": step, "model": {"w": torch.ones(3)}, "optimizer": {}, "metrics_rows": rows}


def test_run_folder_lock_log_checkpoints_and_resume_without_a_trainer(tmp_path, tiny):
    run, logs = tmp_path / "run", []
    folder = RunFolder(run, DistInfo(), logs.append)
    assert folder.open(tiny(run)) is None and (run / "checkpoints").is_dir()
    with pytest.raises(RunLocked, match="in use by another e2mc run"):
        RunFolder(run, DistInfo(), logs.append).open(tiny(run, "out.overwrite=true"))
    folder.open_log(None, tensorboard=False)
    folder.write_run_files(tiny(run), None, {"world_size": 1}, {"device": "cpu"})
    info = yaml.safe_load((run / "config.yaml").read_text())["run_info"]
    assert list(info) == ["world_size", "e2mc_version", "torch_version", "git_commit", "device", "started"]
    for step in (1, 2):
        folder.write_row({"epoch": 0, "step": step, "phase": "train", "loss": 1.5}, ["loss"])
    assert folder.metrics_rows == 2 and folder.last_good is None
    folder.write_checkpoint(_state(2, folder.metrics_rows), step=2, epoch=0)
    assert folder.last_good == run / "checkpoints" / "last.pt" and folder.last_good_step == 2
    assert (run / "checkpoints" / "epoch_0000.pt").is_file()
    folder.write_row({"epoch": 0, "step": 3, "phase": "train", "loss": 1.0}, ["loss"])  # after the checkpoint
    folder.close()
    assert sorted(p.name for p in run.iterdir()) == [".e2mc.lock", "checkpoints", "config.yaml", "metrics.csv"]
    assert (run / ".e2mc.lock").read_text() == ""  # a clean end empties the lock file

    again = RunFolder(run, DistInfo(), logs.append)
    path, state = again.open(tiny(run, "out.resume=true"))
    assert path == run / "checkpoints" / "last.pt" and state["step"] == 2
    assert again.last_good == path and again.last_good_step == 2
    again.open_log(state, tensorboard=False)  # the row written after the checkpoint is cut
    assert [r["step"] for r in read_metrics(run / "metrics.csv")] == ["1", "2"]
    again.close()


def test_calibration_measures_through_the_training_step_loss(tmp_path, tiny, monkeypatch):
    """``addon.cov_weight=auto`` measures with the trainer's own step loss (views, layout, autocast,
    forward, method loss), without the training step's hooks (no StepContext)."""
    calls = []
    real = Trainer.forward_loss

    def spy(self, images, model, addon, ctx=None):
        calls.append((ctx is None, addon))
        return real(self, images, model, addon, ctx)

    monkeypatch.setattr(Trainer, "forward_loss", spy)
    cfg = tiny(tmp_path / "run", "addon.name=e2mc", "addon.cov_weight=auto", "train.max_steps=1", "data.limit=256")
    t = Trainer(cfg, quiet=True)
    probe = calls[0][1]  # the calibration's own add-on (unweighted covariance), not the run's
    assert calls == [(True, probe)] * CALIBRATION_BATCHES and probe is not t.addon and t.state.auto_cov_weight > 0
    t.fit()
    assert calls[CALIBRATION_BATCHES:] == [(False, t.addon)]


def test_a_run_refused_before_it_began_leaves_no_folder(tmp_path, tiny):
    """A refused setting (here a data folder that is not there) used to leave the run folder with its
    lock file and an empty checkpoints/ behind; a folder that was there before stays."""
    from e2mc.errors import DataError

    new = tmp_path / "new"
    with pytest.raises(DataError, match="does not exist"):
        Trainer(tiny(new, f"data.dataset={tmp_path / 'nope'}"), quiet=True)
    assert not new.exists()
    old = tmp_path / "old"
    (old / "notes").mkdir(parents=True)
    with pytest.raises(DataError, match="does not exist"):
        Trainer(tiny(old, f"data.dataset={tmp_path / 'nope'}"), quiet=True)
    assert (old / "notes").is_dir()
