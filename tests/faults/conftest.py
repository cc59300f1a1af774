"""Shared helpers of the fault tests: a tiny deterministic digits run, run in-process or as a
subprocess (``child.py`` injects one fault into it)."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from e2mc.config import load_config

# 4 steps per epoch, 3 epochs, a probe row per epoch: a few seconds on one CPU thread.
TINY = [
    "data.dataset=digits",
    "data.image_size=8",
    "data.limit=128",
    "model.init=random:resnet_mini:8-8-8",
    "model.head_sizes={projector: [32, 32]}",
    "optim.batch_size=32",
    "optim.lr=0.05",
    "optim.schedule=constant",
    "train.epochs=3",
    "train.log_every=1",
    "train.probe_size=16",
    "train.tensorboard=false",
    "train.deterministic=true",
]
SETS = [a for o in TINY for a in ("--set", o)]
CHILD = Path(__file__).with_name("child.py")
TIMING = ("wall_time", "img_per_s")  # the only columns allowed to differ between two runs


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_config(out, *extra):
    """The tiny run as a RunConfig (for in-process Trainers)."""
    return load_config(None, TINY + [f"out.dir={out}", "mode=pretrain", *extra])


def child(fault, *argv, wait=True, timeout=600):
    """Run ``e2mc ARGV`` in a subprocess with ``fault`` injected (see child.py); ``timeout`` only
    bounds a hang (generous: a slow machine must not fail the test)."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")]),
    )
    cmd = [sys.executable, str(CHILD), fault, *map(str, argv)]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def wait_for_line(proc, wanted, stream="stdout", timeout=300.0):
    """Read ``proc``'s ``stream`` until a line starting with ``wanted``; returns the lines read.

    The lines are read in a thread, so a child that hangs or dies without printing ``wanted``
    fails the test (the child killed, its output in the message) instead of blocking it. The
    timeout only bounds a hang: the test waits for the line, however slow the machine.
    """
    pipe, seen, found = getattr(proc, stream), [], threading.Event()

    def read():
        for line in pipe:
            seen.append(line)
            if line.startswith(wanted):
                found.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found.is_set():
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate(timeout=60)
        said = "".join(seen) + (out or "") + "\n" + (err or "")
        pytest.fail(f"child (exit {proc.returncode}) printed no {wanted!r} line within {timeout} s:\n{said[-3000:]}")
    return seen


def comparable(rows):
    """Metrics rows without the timing columns."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def weights(run_dir, name="last.pt"):
    from e2mc.train.run import load_checkpoint

    return load_checkpoint(Path(run_dir) / "checkpoints" / name)["model"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def cli(*argv):
    """``(exit code, stdout, stderr)`` of ``e2mc ARGV`` run in this process."""
    import contextlib
    import io

    from e2mc.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def one_line_error(code, err, *must):
    """Assert exit 2 with one error line (no traceback) naming every fragment of ``must``."""
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, (code, err)
    assert lines and lines[-1].startswith("e2mc "), err
    for frag in must:
        assert frag in lines[-1], (frag, lines[-1])
    return lines[-1]
