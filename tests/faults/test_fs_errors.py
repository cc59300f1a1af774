"""File-system failures end in one line naming what failed and where (exit 2), with the previous
checkpoint and metrics.csv intact and no temp file left."""

import csv
import errno
import os
import shutil
import subprocess
import sys

import pytest
import torch

from e2mc.train.run import load_checkpoint, read_metrics

from .conftest import SETS, cli, one_line_error

# these count the run's writes: the collapse guard's best.pt and rows would add to them
GUARD_OFF = ("--set", "train.guard.action=off")


def _intact(run, step):
    """last.pt loads and holds ``step``; metrics.csv is whole rows under its header; no temp files."""
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == step
    text = (run / "metrics.csv").read_text()
    rows = list(csv.reader(text.splitlines()))
    assert text.endswith("\n") and all(len(r) == len(rows[0]) for r in rows), text
    assert not [p for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if p.name.endswith(".tmp")]


def test_checkpoint_write_cut_short_by_a_full_disk(tmp_path, monkeypatch):
    """torch.save's own failure ("unexpected pos", what a full disk gives) on the epoch-2 checkpoint."""
    real, calls = torch.save, []

    def save(obj, f, *a, **kw):
        calls.append(1)
        if len(calls) == 3:  # last.pt of epoch 2 (epoch 1 wrote last.pt and epoch_0001.pt)
            f.write(b"PK\x03\x04partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "r"
    code, _, err = cli("pretrain", *SETS, *GUARD_OFF, "--out", run)
    one_line_error(code, err, "could not write", str(run / "checkpoints" / "last.pt"), "disk is full", "intact")
    _intact(run, 4)


def test_metrics_append_on_a_full_disk_leaves_no_half_row(tmp_path, monkeypatch):
    real, calls = os.write, []

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.csv"):
            calls.append(1)
            if len(calls) == 6:  # step 5 (appends: init+step 1, steps 2-4, epoch 1): half a row, then ENOSPC
                real(fd, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    run = tmp_path / "r"
    code, _, err = cli("pretrain", *SETS, *GUARD_OFF, "--out", run)
    one_line_error(code, err, "could not append to the metrics log", str(run / "metrics.csv"), "disk is full")
    _intact(run, 4)
    assert [r["step"] for r in read_metrics(run / "metrics.csv")] == ["0", "1", "2", "3", "4", "4"]


def test_paths_that_cannot_hold_a_run(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    code, _, err = cli("pretrain", *SETS, "--out", tmp_path / "file")
    one_line_error(code, err, "is a file", "give a folder")
    assert (tmp_path / "file").read_text() == "x"
    if os.path.isdir("/proc/self"):
        code, _, err = cli("pretrain", *SETS, "--out", "/proc/e2mc-run/r")
        one_line_error(code, err, "could not create the run folder", "/proc/e2mc-run/r")

    def denied(*a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied")

    import tempfile

    monkeypatch.setattr(tempfile, "mkstemp", denied)  # what a folder of someone else gives a non-root user
    code, _, err = cli("pretrain", *SETS, "--out", tmp_path / "r")
    one_line_error(code, err, "could not write", "Permission denied", "make the folder writable", "--resume")


def _mount(*args):
    return subprocess.run(["mount", *args], capture_output=True, text=True).returncode == 0


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("mount") is None,
    reason="a real full / read-only file system needs a tmpfs mount (Linux, root)",
)
def test_real_full_and_read_only_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mnt)):
        pytest.skip("mounting a tmpfs is not permitted here (container without CAP_SYS_ADMIN)")
    try:
        code, _, err = cli("pretrain", *SETS, "--out", mnt / "r")  # 48 KiB: the first checkpoint does not fit
        one_line_error(code, err, str(mnt / "r"), "disk is full")
        assert not [p for p in (mnt / "r").rglob("*") if p.name.endswith(".tmp")]
        assert not (mnt / "r" / "metrics.csv").exists() or (mnt / "r" / "metrics.csv").read_text().endswith("\n")
        assert _mount("-o", "remount,ro", str(mnt))
        code, _, err = cli("pretrain", *SETS, "--out", mnt / "other")
        one_line_error(code, err, str(mnt / "other"), "read-only")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_any_command_reports_a_refused_path_in_one_line(tmp_path, capsys, monkeypatch):
    """An OSError that no layer translated (e.g. `e2mc report --out /proc/x`) is one line, exit 2."""
    import errno

    import e2mc.commands.inspect as inspect_cmd
    from e2mc.cli import main

    def refuse(args):
        raise OSError(errno.EROFS, "Read-only file system", "/proc/x/report.md")

    monkeypatch.setattr(inspect_cmd, "run_inspect", refuse)
    assert main(["inspect", str(tmp_path / "any.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/proc/x/report.md" in err[0] and "Read-only file system" in err[0]
    assert "Traceback" not in err[0]
