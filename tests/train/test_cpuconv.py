"""A CPU half-precision run whose strided convolution would see a 1-pixel-wide input is refused in one
line before any update (train/cpuconv.py: PyTorch's CPU bf16 backward of such a convolution returns
nondeterministic, sometimes huge weight gradients); fp32, or an image size where every strided
convolution sees at least 2 pixels of width, trains."""

import pytest
import torch
from torch import nn

from e2mc.errors import ConfigError
from e2mc.train.cpuconv import watch_strided_1px
from e2mc.train.loop import Trainer

R18 = ["model.init=random:resnet18", "model.head_sizes={projector: [32, 32]}"]  # the ImageNet 7x7 stem


def test_watch_names_only_strided_convs_on_one_pixel():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1, 2))
    with watch_strided_1px(net) as hits:
        net(torch.zeros(2, 3, 2, 2))  # the first sees 2 x 2, the second (stride 1) and third (1 x 1 kernel) 1 x 1
    assert hits == []
    with watch_strided_1px(net) as hits:
        net(torch.zeros(2, 3, 1, 5))  # 1 pixel high but 5 wide: measured exact (cpu_bf16_conv.md)
    assert hits == []
    with watch_strided_1px(net) as hits:
        net(torch.zeros(2, 3, 5, 1))  # 1 pixel wide: measured not reproducible
    assert hits == [("0", "5 x 1")]
    with watch_strided_1px(net) as hits:
        pass
    assert not net[0]._forward_pre_hooks  # hooks removed


def test_bf16_resnet18_on_8px_is_refused_before_any_update(tmp_path, tiny):
    run = tmp_path / "r"
    t = Trainer(tiny(run, *R18, "data.image_size=8", "train.precision=bf16", "train.max_steps=2"))
    before = {k: v.detach().clone() for k, v in t.model.named_parameters()}
    with pytest.raises(ConfigError) as e:
        t.fit()
    msg = str(e.value)
    # 8 px -> 4 (stem) -> 2 (max-pool) -> layer2 1 x 1 -> layer3.0.conv1 sees 1 x 1 (and layer4.0.conv1)
    assert "\n" not in msg and "backbone.layer3.0.conv1 (and 1 more)" in msg and "1 x 1" in msg
    assert "train.precision=fp32" in msg and "data.image_size" in msg
    assert all(torch.equal(before[k], v) for k, v in t.model.named_parameters())  # no update
    assert not (run / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize(
    "sets", [["data.image_size=8", "train.precision=fp32"], ["data.image_size=32", "train.precision=bf16"]]
)
def test_fp32_or_a_larger_image_trains(tmp_path, tiny, sets):
    t = Trainer(tiny(tmp_path / "r", *R18, *sets, "train.max_steps=1", "train.guard.action=off"))
    t.fit()
    assert t.state.global_step == 1
