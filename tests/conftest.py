"""Fixtures shared by every test folder."""

import pytest
import torch


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
