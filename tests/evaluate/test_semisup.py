"""Fine-tuning protocols learn, and move the backbone only when they should (e2mc.evaluation.semisup).

On digits (10 balanced classes: chance is 0.10), semi-supervised fine-tuning and the frozen
linear protocol must beat chance by a wide margin; semisup must change the backbone's weights,
the frozen probe must leave every backbone tensor (weights and BN statistics) bit-identical, and
neither may touch the caller's model. The networks trained inside are captured where the
protocol deep-copies the caller's model.
"""

import copy

import pytest
import torch
from torch import nn

from e2mc.data.datasets import build_dataset
from e2mc.evaluation import semisup as semisup_mod
from e2mc.evaluation.semisup import linear_probe_finetune, semisup


class DigitNet(nn.Module):
    """Conv -> BN -> ReLU -> 4x4 average pool: 256 features that keep the digit's layout."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten()
        )

    def embed(self, x):
        return self.backbone(x)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return (
        build_dataset("digits", "train", image_size=8, limit=200),
        build_dataset("digits", "test", image_size=8, limit=200),
    )


@pytest.fixture
def trained(monkeypatch):
    """The networks the protocol trains (its deep copies of the caller's model)."""
    nets = []

    def deepcopy(obj, memo=None):
        out = copy.deepcopy(obj, memo)
        nets.append(out)
        return out

    monkeypatch.setattr(semisup_mod, "copy", type("copy", (), {"deepcopy": staticmethod(deepcopy)}))
    return nets


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_semisup_learns_and_moves_the_backbone(digits, trained):
    train, test = digits
    model = DigitNet()
    before = _state(model.backbone)
    res = semisup(model, train, test, fractions=(0.5,), seeds=(0,), epochs=8, batch_size=32, lr_backbone=0.05)
    idx = torch.tensor(res["subsets"]["50pct"]["0"])
    assert torch.bincount(torch.tensor(train.targets)[idx]).tolist() == [10] * 10  # class-balanced half
    assert res["top1_50pct"] > 0.3, res  # chance: 0.10
    assert res["reported"] == "last epoch" and res["per_seed"]["top1_50pct"] == [res["top1_50pct"]]
    assert len(trained) == 1
    after = trained[0].backbone.state_dict()
    assert (after["0.weight"] - before["0.weight"]).abs().max() > 1e-3  # fine-tuned
    assert not torch.equal(after["1.running_mean"], before["1.running_mean"])  # BN in train mode
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in before.items())  # caller untouched


def test_frozen_linear_protocol_learns_and_keeps_the_backbone(digits, trained):
    train, test = digits
    model = DigitNet()
    before = _state(model.backbone)
    res = linear_probe_finetune(model, train, test, epochs=8, batch_size=32, lr=0.1)
    assert res["top1"] > 0.4, res  # chance: 0.10
    assert len(trained) == 1
    after = trained[0].backbone.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # weights AND BN statistics frozen
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in before.items())
