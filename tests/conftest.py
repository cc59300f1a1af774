"""Fixtures shared by every test folder."""

import os

import pytest
import torch

TEMP_SPACE = 4 * 2**30  # the suite's peak in its temp folder: 2.2-2.6 GB measured (full-size official checkpoints)


def pytest_sessionstart(session):
    """Refuse to start, in one line, where the temp folder's disk cannot hold the suite: a full disk
    fails dozens of tests at random with torch.save's "iostream error", far from the cause."""
    import shutil
    import tempfile
    from pathlib import Path

    where = Path(session.config.option.basetemp or tempfile.gettempdir()).resolve()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < TEMP_SPACE:
        raise pytest.UsageError(
            f"the tests write up to {TEMP_SPACE / 2**30:.0f} GiB of temporary files and {where} has "
            f"{free / 2**30:.1f} GiB free: free space there, or point --basetemp (or TMPDIR) at a disk with room"
        )


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """The suite's own ``$E2MC_CACHE`` (subprocesses inherit it): the tests must neither grow the
    user's ``~/.cache/e2mc`` (every temporary image folder cached its decoded arrays and features
    there, 1.3 GB after a few runs) nor pass because an earlier run left a warm cache there. A test
    that sets its own keeps it (monkeypatch)."""
    old = os.environ.get("E2MC_CACHE")
    os.environ["E2MC_CACHE"] = str(tmp_path_factory.mktemp("e2mc_cache"))
    yield
    if old is None:
        os.environ.pop("E2MC_CACHE", None)
    else:
        os.environ["E2MC_CACHE"] = old


@pytest.fixture
def one_torch_thread():
    """Run the test with one torch thread: two threads on a shared 2-core box spin-wait (up to 100x slower)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_digits_start(root):
    """A 3-step VICReg pre-training on digits in ``root / "pretrain"`` (one torch thread): the start
    checkpoint that the tune, tune-signal and reproduce-harness tests continue from."""
    import e2mc

    torch.set_num_threads(1)
    run = e2mc.pretrain(
        "digits_vicreg_pretrain",
        train__max_steps=3,
        train__epochs=1,
        train__device="cpu",
        train__probe_size=0,
        train__tensorboard=False,
        out__dir=str(root / "pretrain"),
    )
    return run / "checkpoints" / "last.pt"
