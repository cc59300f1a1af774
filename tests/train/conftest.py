"""Shared helpers for the training-engine tests: tiny configs on digits."""

import pytest
import torch

from e2mc.config import load_config

TINY = [
    "data.dataset=digits", "data.image_size=16", "model.init=random:resnet_mini:8-16-32",
    "model.head_sizes={projector: [64, 64]}", "optim.batch_size=64", "optim.lr=0.05",
    "optim.schedule=constant", "train.log_every=1", "train.probe_size=64", "train.tensorboard=false",
]


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads on the shared 2-core box spin-wait: 100x slower
    yield
    torch.set_num_threads(old)


def tiny_config(out, *extra, mode="pretrain"):
    """A RunConfig for a few fast steps on digits at 16 px."""
    return load_config(None, TINY + [f"out.dir={out}", f"mode={mode}", *extra])


@pytest.fixture
def tiny():
    """The ``tiny_config`` factory."""
    return tiny_config
