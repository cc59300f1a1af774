"""facebookresearch/barlowtwins's ``main.py`` save path, reproduced (no official code copied).

Writes, into OUT, what main.py writes into ``--checkpoint-dir``:

* ``checkpoint.pth`` = ``dict(epoch=, model=model.state_dict(), optimizer=optimizer.state_dict())``,
  ``model`` being the DistributedDataParallel-wrapped ``BarlowTwins`` (keys ``module.backbone.*``:
  torchvision's ResNet with ``fc = nn.Identity()``, ``module.projector.*``: Linear(bias=False), BN1d,
  ReLU per hidden size then Linear(bias=False), ``module.bn.*``: BatchNorm1d(affine=False)) and
  ``optimizer`` its ``LARS`` after ``--steps`` steps: two param groups, ``model.parameters()`` with
  ``ndim != 1`` then those with ``ndim == 1``, each ``{lr, weight_decay, momentum, eta,
  weight_decay_filter: True, lars_adaptation_filter: True, params}`` (booleans: main.py's LARS
  filters through its own method ``exclude_bias_and_norm``, so no function is pickled), state
  ``{i: {"mu": tensor}}`` for every parameter;
* ``resnet50.pth`` = ``model.module.backbone.state_dict()`` (the name main.py uses);
* ``checkpoint.tensors.pt`` (not official): the model's tensors, plain, for the tests to compare.

ResNet-18 (torchvision, ``zero_init_residual=True``) instead of main.py's ResNet-50, projector
``512-64-64-64``.

``python gen_barlowtwins.py reload FILE`` is main.py's resume path: builds the model and LARS (two
groups), ``torch.load`` s FILE (weights_only=False, as main.py on the torch it was written for),
``model.load_state_dict(ckpt["model"])``, ``optimizer.load_state_dict(ckpt["optimizer"])``, checks
the groups (weights then ``ndim == 1`` parameters, boolean filters), takes one step; prints a
JSON summary.

Checked against the official code (commit 8e8d284 of facebookresearch/barlowtwins, ``git
archive`` to /tmp, nothing installed): tests/official/check/barlowtwins_official.py imports the
official main.py (its ``BarlowTwins``, ``LARS``, ``adjust_learning_rate`` and ``forward``, with
``torchvision.models.resnet50`` pointed at ``resnet18`` and the projector's first Linear, written
for ResNet-50's 2048 features, replaced by the same ``Linear(512, 64, bias=False)``), wraps it in
a real DistributedDataParallel (gloo, world size 1; SyncBatchNorm conversion skipped: CPU, it
changes no key), builds main.py's two param groups and LARS, runs 2 steps and saves with main.py's
own ``state = dict(...)`` line. tests/official/check/compare.py then compared this generator's
files with those: ``checkpoint.pth`` structure (keys in order, tensor shapes/dtypes, optimizer
state/param_groups) SAME, pickle globals SAME (``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage``, ``torch.LongStorage``);
``resnet50.pth`` SAME and SAME.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from torch import nn, optim

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _nets import Wrapped, generator_main  # noqa: E402

MLP = "64-64-64"
BATCH = 8


class BarlowTwinsNet(nn.Module):
    """main.py's ``BarlowTwins``: ``backbone`` (torchvision ResNet, fc Identity), ``projector``, ``bn``."""

    def __init__(self, mlp: str = MLP):
        super().__init__()
        import torchvision

        self.backbone = torchvision.models.resnet18(zero_init_residual=True)
        self.backbone.fc = nn.Identity()
        sizes = [512] + [int(s) for s in mlp.split("-")]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-2], sizes[1:-1]):
            layers += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
        self.projector = nn.Sequential(*layers)
        self.bn = nn.BatchNorm1d(sizes[-1], affine=False)

    def forward(self, y1, y2, lambd=0.0051):
        z1, z2 = self.projector(self.backbone(y1)), self.projector(self.backbone(y2))
        c = self.bn(z1).T @ self.bn(z2) / BATCH  # world size 1: the all_reduce is the identity
        on = (torch.diagonal(c) - 1).pow(2).sum()
        off = (c.pow(2) * (1 - torch.eye(c.shape[0]))).sum()
        return on + lambd * off


class LARS(optim.Optimizer):
    """LARS with main.py's defaults dict (boolean filters) and state (``mu`` per parameter)."""

    def __init__(self, params, lr, weight_decay=0, momentum=0.9, eta=0.001, weight_decay_filter=False,
                 lars_adaptation_filter=False):  # fmt: skip
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            eta=eta,
            weight_decay_filter=weight_decay_filter,
            lars_adaptation_filter=lars_adaptation_filter,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if not g["weight_decay_filter"] or p.ndim != 1:
                    d = d + g["weight_decay"] * p
                if not g["lars_adaptation_filter"] or p.ndim != 1:
                    pn, dn = p.norm(), d.norm()
                    d = d * (g["eta"] * pn / dn if pn > 0 and dn > 0 else 1.0)
                mu = self.state[p].setdefault("mu", torch.zeros_like(p))
                mu.mul_(g["momentum"]).add_(d)
                p.sub_(g["lr"] * mu)


def build(mlp: str = MLP):
    model = BarlowTwinsNet(mlp)
    weights = [p for p in model.parameters() if p.ndim != 1]
    biases = [p for p in model.parameters() if p.ndim == 1]
    model = Wrapped(model)
    opt = LARS(
        [{"params": weights}, {"params": biases}],
        lr=0,
        weight_decay=1e-6,
        weight_decay_filter=True,
        lars_adaptation_filter=True,
    )
    return model, opt


def train(model, opt, steps: int, seed: int, start: int = 0):
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(start, start + steps):
        # main.py's adjust_learning_rate in its warm-up (10 epochs of 10 steps here): batch / 256 * step / warm-up
        lr = BATCH / 256 * step / 100
        opt.param_groups[0]["lr"], opt.param_groups[1]["lr"] = lr * 0.2, lr * 0.0048
        img = torch.rand(BATCH, 3, 32, 32, generator=g)
        y1, y2 = img + 0.1 * torch.randn(img.shape, generator=g), img.flip(-1)
        opt.zero_grad()
        model(y1, y2).backward()
        opt.step()


def generate(out: Path, steps: int, epoch: int, seed: int) -> None:
    torch.manual_seed(seed)
    model, opt = build()
    train(model, opt, steps, seed, start=1)
    out.mkdir(parents=True, exist_ok=True)
    state = dict(epoch=epoch, model=model.state_dict(), optimizer=opt.state_dict())
    torch.save(state, out / "checkpoint.pth")
    torch.save(model.module.backbone.state_dict(), out / "resnet50.pth")
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / "checkpoint.tensors.pt")


def reload(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    proj = [k for k in ckpt["model"] if k.startswith("module.projector.") and k.endswith(".weight")]
    mlp = "-".join(str(ckpt["model"][k].shape[0]) for k in proj if ckpt["model"][k].dim() == 2)
    model, opt = build(mlp)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    groups = opt.param_groups
    with_mu = sum("mu" in opt.state[p] for p in model.parameters())
    mu_finite = all(math.isfinite(float(opt.state[p]["mu"].sum())) for p in model.parameters() if "mu" in opt.state[p])
    train(model, opt, 1, seed=1, start=5)
    return {
        "epoch": ckpt["epoch"],
        "groups": [len(g["params"]) for g in groups],
        "weights_then_biases": all(p.ndim != 1 for p in groups[0]["params"])
        and all(p.ndim == 1 for p in groups[1]["params"]),
        "filters": [[g["weight_decay_filter"], g["lars_adaptation_filter"]] for g in groups],
        "params": len(list(model.parameters())),
        "with_mu": with_mu,
        "mu_finite": mu_finite,
        "bn_batches": int(model.module.bn.num_batches_tracked),
        "mlp": mlp,
    }


def main(argv=None) -> int:
    return generator_main(__doc__, generate, reload, 100, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
