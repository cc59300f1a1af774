"""One run per folder: a second e2mc process on a running run's --out gets one line naming the
holder (exit 2) and changes nothing; a dead run's stale lock is taken over with a warning."""

import os
import socket

import pytest

from e2mc.errors import ConfigError, RunLocked
from e2mc.train.loop import Trainer
from e2mc.train.run import RunLock, load_checkpoint, read_metrics

from .conftest import SETS, child, cli, one_line_error, tiny_config, wait_for_line


def test_second_process_on_a_running_folder(tmp_path):
    run, go = tmp_path / "r", tmp_path / "go"
    first = child(f"pause:2:{go}", "pretrain", *SETS, "--set", "train.max_steps=3", "--out", run, wait=False)
    try:
        wait_for_line(first, "paused")  # (the test fails, not hangs, if it never comes)
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".e2mc.lock"}
        holder = f"PID {first.pid} on {socket.gethostname()}"
        for extra in ([], ["--resume"], ["--set", "out.overwrite=true"]):
            code, _, err = cli("pretrain", *SETS, "--out", run, *extra)
            one_line_error(code, err, f"run folder {run} is in use by another e2mc run ({holder}", "another --out")
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".e2mc.lock"} == before
        go.touch()
        _, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-2000:]
    steps = [r["step"] for r in read_metrics(run / "metrics.csv") if r["phase"] == "train"]
    assert steps == ["1", "2", "3"]  # one writer: no rows of another run
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3
    assert (run / ".e2mc.lock").read_text() == ""  # released on a clean end


def test_stale_lock_of_a_dead_run_is_taken_over(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    pid = 2**22 + 12345  # above Linux's pid_max default: no such process
    (run / ".e2mc.lock").write_text(f"{pid} {socket.gethostname()} 2026-01-01T00:00:00\n")
    Trainer(tiny_config(run, "train.max_steps=1")).fit()
    assert f"taking over the stale lock of {run} left by PID {pid}" in capsys.readouterr().err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 1


def test_lock_is_exclusive_and_released_when_setup_fails(tmp_path):
    lock = RunLock.acquire(tmp_path / "r")
    with pytest.raises(RunLocked, match=rf"PID {os.getpid()} on "):
        RunLock.acquire(tmp_path / "r")
    lock.release()
    with pytest.raises(ConfigError, match="m-spacing"):  # fails after taking the lock
        Trainer(tiny_config(tmp_path / "r", "optim.batch_size=8", "addon.name=e2mc", "addon.m=8"), quiet=True)
    RunLock.acquire(tmp_path / "r").release()  # free again
