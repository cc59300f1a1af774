"""Networks with the official repositories' module structure, written here (no official code).

``FbResNet`` is the ResNet of facebookresearch/vicreg ``resnet.py`` and facebookresearch/swav
``src/resnet50.py`` (same trunk): a parameter-free ``padding`` (ConstantPad2d(1)) before a 7x7
``conv1`` with padding 2, ``bn1``, ``relu``, ``maxpool``, ``layer1..4`` of blocks whose
``downsample`` is ``Sequential(conv1x1, BN)``, ``avgpool``, no ``fc``. The SwAV variant adds
``projection_head`` (Linear, BN1d, ReLU, Linear) and ``prototypes`` (Linear, no bias) after the
trunk, in that registration order. Both repositories' BasicBlock requires width 64, so the small
network the fixtures use is the ResNet-18 block layout (2, 2, 2, 2) at width 64: the smallest
ResNet e2mc reads from weights (its arch detection wants a 64-channel stem).

``vicreg_projector`` is main_vicreg.py's ``Projector``: (Linear, BN1d, ReLU) per hidden size,
then Linear without bias. SimSiam's model is ``simsiam_model`` below over torchvision's own
ResNet (what main_simsiam.py builds from ``torchvision.models.__dict__[arch]``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn


def generator_main(doc: str, generate, reload, epoch: int, argv=None) -> int:
    """The generators' command line: ``generate OUT [--steps --epoch --seed]`` writes the official
    files, ``reload FILE`` runs the official resume path and prints its JSON summary."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("out", type=Path)
    g.add_argument("--steps", type=int, default=2)
    g.add_argument("--epoch", type=int, default=epoch)
    g.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("reload")
    r.add_argument("file", type=Path)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.cmd == "generate":
        generate(a.out, a.steps, a.epoch, a.seed)
    else:
        print(json.dumps(reload(a.file)))
    return 0


def _conv3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, groups=1, bias=False, dilation=1)


class Block(nn.Module):
    """The residual basic block: conv1, bn1, relu, conv2, bn2, downsample."""

    expansion = 1

    def __init__(self, cin, cout, stride=1, downsample=None):
        super().__init__()
        self.conv1 = _conv3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class FbResNet(nn.Module):
    """The VICReg/SwAV trunk (see the module docstring); SwAV heads when ``output_dim`` > 0."""

    def __init__(
        self, layers=(2, 2, 2, 2), width=64, zero_init_residual=False, hidden_mlp=0, output_dim=0, prototypes=0
    ):
        super().__init__()
        self.padding = nn.ConstantPad2d(1, 0.0)
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = width
        for i, n in enumerate(layers):
            cout, stride = width * 2**i, 1 if i == 0 else 2
            down = None
            if stride != 1 or cin != cout:
                down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
            blocks = [Block(cin, cout, stride, down)] + [Block(cout, cout) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.out_dim = cin
        self.projection_head = self.prototypes = None
        if output_dim:
            self.projection_head = nn.Sequential(
                nn.Linear(cin, hidden_mlp),
                nn.BatchNorm1d(hidden_mlp),
                nn.ReLU(inplace=True),
                nn.Linear(hidden_mlp, output_dim),
            )
            self.prototypes = nn.Linear(output_dim, prototypes, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Block):
                    nn.init.zeros_(m.bn2.weight)

    def trunk(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.padding(x)))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x):
        x = self.trunk(x)
        if self.projection_head is None:
            return x
        z = nn.functional.normalize(self.projection_head(x), dim=1, p=2)
        return z, self.prototypes(z)


def vicreg_projector(in_dim: int, mlp: str) -> nn.Sequential:
    sizes = [in_dim] + [int(s) for s in mlp.split("-")]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(True)]
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
    return nn.Sequential(*layers)


class VICRegNet(nn.Module):
    """main_vicreg.py's ``VICReg``: ``backbone`` (zero-init residual) then ``projector``."""

    def __init__(self, mlp: str):
        super().__init__()
        self.backbone = FbResNet(zero_init_residual=True)
        self.projector = vicreg_projector(self.backbone.out_dim, mlp)

    def forward(self, x):
        return self.projector(self.backbone(x))


class SimSiamNet(nn.Module):
    """simsiam/builder.py's ``SimSiam`` over ``torchvision.models.<arch>``: projector in ``encoder.fc``."""

    def __init__(self, arch: str, dim: int, pred_dim: int):
        super().__init__()
        import torchvision

        self.encoder = torchvision.models.__dict__[arch](num_classes=dim, zero_init_residual=True)
        prev = self.encoder.fc.weight.shape[1]
        self.encoder.fc = nn.Sequential(
            nn.Linear(prev, prev, bias=False),
            nn.BatchNorm1d(prev),
            nn.ReLU(inplace=True),
            nn.Linear(prev, prev, bias=False),
            nn.BatchNorm1d(prev),
            nn.ReLU(inplace=True),
            self.encoder.fc,
            nn.BatchNorm1d(dim, affine=False),
        )
        self.encoder.fc[6].bias.requires_grad = False  # as the official builder: the bias gets no grad
        self.predictor = nn.Sequential(
            nn.Linear(dim, pred_dim, bias=False),
            nn.BatchNorm1d(pred_dim),
            nn.ReLU(inplace=True),
            nn.Linear(pred_dim, dim),
        )

    def forward(self, x):
        z = self.encoder(x)
        return z, self.predictor(z)


class Wrapped(nn.Module):
    """What DistributedDataParallel's ``state_dict`` shows: the model under ``module``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *a):
        return self.module(*a)
