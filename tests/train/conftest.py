"""Shared helpers for the training-engine tests: tiny configs on digits."""

import pytest

from e2mc.config import load_config

TINY = [
    "data.dataset=digits",
    "data.image_size=16",
    "model.init=random:resnet_mini:8-16-32",
    "model.head_sizes={projector: [64, 64]}",
    "optim.batch_size=64",
    "optim.lr=0.05",
    "optim.schedule=constant",
    "train.log_every=1",
    "train.probe_size=64",
    "train.tensorboard=false",
]


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    """Every test here runs with one torch thread (tests/conftest.py)."""
    yield


def tiny_config(out, *extra, mode="pretrain"):
    """A RunConfig for a few fast steps on digits at 16 px."""
    return load_config(None, TINY + [f"out.dir={out}", f"mode={mode}", *extra])


@pytest.fixture
def tiny():
    """The ``tiny_config`` factory."""
    return tiny_config
