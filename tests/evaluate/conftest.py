"""Tiny stand-ins for the evaluation tests: a conv net with ``.embed``/``.projector`` and
uint8 TensorDatasets whose classes are separable by colour."""

import pytest
import torch
from torch import nn


class TinyNet(nn.Module):
    """Conv -> BN -> ReLU -> global average pool; ``embed`` gives (N, 8); projector 8 -> 6."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.projector = nn.Linear(8, 6)
        self.method = "vicreg"

    def embed(self, x):
        return self.backbone(x)


def colour_dataset(n_per_class: int = 20, classes: int = 3, size: int = 8, seed: int = 0, signal: int = 150):
    """uint8 images whose dominant channel is the class (``signal`` added to it, on noise in [0, 80))."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.arange(classes).repeat_interleave(n_per_class)
    x = torch.randint(0, 80, (len(ys), 3, size, size), generator=g)
    for i, y in enumerate(ys):
        x[i, int(y) % 3] += signal
    return torch.utils.data.TensorDataset(x.clamp(0, 255).to(torch.uint8), ys)


@pytest.fixture
def tiny_net():
    return TinyNet(0)


@pytest.fixture
def colour_data():
    return colour_dataset(20, seed=0), colour_dataset(10, seed=1)


@pytest.fixture
def make_tiny_net():
    """Factory: ``make_tiny_net(seed)`` -> a fresh :class:`TinyNet`."""
    return TinyNet
