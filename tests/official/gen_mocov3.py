"""facebookresearch/moco-v3's ``main_moco.py`` save path, reproduced (no official code copied).

Writes, into OUT:

* ``checkpoint_0099.pth.tar``: ``{'epoch', 'arch', 'state_dict': model.state_dict(), 'optimizer':
  optimizer.state_dict(), 'scaler': scaler.state_dict()}`` (main_moco.py's ``save_checkpoint`` call).
  ``model`` is the DistributedDataParallel-wrapped ``moco.builder.MoCo_ResNet`` over torchvision's
  own ``resnet18(num_classes=mlp_dim, zero_init_residual=True)``: ``module.base_encoder.*`` with the
  2-layer projector in ``base_encoder.fc`` (Linear without bias, BN, ReLU, Linear without bias,
  BN(affine=False)), ``module.momentum_encoder.*`` (the same, no gradient), ``module.predictor.*``
  (Linear, BN, ReLU, Linear; no last BN for ResNets), ``--moco-dim 16 --moco-mlp-dim 64``. The
  optimizer is ``moco.optimizer.LARS`` over ``model.parameters()`` (one group ``{lr, weight_decay,
  momentum, trust_coefficient, params}``, weight decay 1e-6, momentum 0.9): the momentum encoder's
  parameters are in the group but never get a gradient, so the state (``mu``) holds the base
  encoder's and the predictor's positions only. ``scaler`` is the enabled GradScaler's state of a
  GPU run (``scale, growth_factor, backoff_factor, growth_interval, _growth_tracker``; written
  here by ``torch.amp.GradScaler('cpu')``, whose state has the same keys and types). Each step
  moves the momentum encoder (cosine momentum from 0.99) inside the forward, before the keys.
* ``checkpoint.tensors.pt`` (not official): the model's tensors, plain, for the tests.

``python gen_mocov3.py reload FILE`` is main_moco.py's ``--resume`` path: ``model.load_state_dict
(checkpoint['state_dict'])`` (strict), ``optimizer.load_state_dict(checkpoint['optimizer'])``,
``scaler.load_state_dict(checkpoint['scaler'])``, one more step; prints a JSON summary.

Checked against the official code (facebookresearch/moco-v3 c349e6e, worktree in /tmp, nothing
installed): tests/official/check/mocov3_official.py builds ``moco.builder.MoCo_ResNet(partial(
torchvision.models.resnet18, zero_init_residual=True), 16, 64, 1.0)`` as main_worker does, wraps it
in a real DDP (gloo, world size 1; SyncBN conversion skipped: CPU), builds ``moco.optimizer.LARS``
and a GradScaler, runs the official ``train()`` for 2 batches of 2 x 4 x 32 px views with
``--moco-m-cos`` and saves with main_moco.py's own ``save_checkpoint({...})`` call. Run on CPU, the
check script only: routes ``Tensor.cuda`` to the tensor itself (the labels' ``.cuda()``), gives
``torch.cuda.amp.GradScaler`` a CPU GradScaler (an enabled scaler, as on a GPU) and provides
``timm.models.layers.helpers`` (vits.py's timm 0.4.9 import; timm 1.0 moved ``to_2tuple``).
tests/official/check/compare.py on the two ``checkpoint_0099.pth.tar``: "same structure and
globals" -- same top-level keys in the same order, same ``state_dict`` keys, order, shapes and
dtypes, same optimizer ``state`` indices (the momentum encoder's 64 positions, 64-127, absent in both) and
keys (``mu``), same ``param_groups`` keys and value types, same ``scaler`` keys and value types,
same pickle globals in ``data.pkl``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn, optim

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _nets import Wrapped, generator_main  # noqa: E402

ARCH, DIM, MLP_DIM, T, MOCO_M = "resnet18", 16, 64, 1.0, 0.99
LR = 0.6 * 8 / 256


def mlp(layers, in_dim, hidden, out, last_bn=True):
    """builder.py's ``_build_mlp`` layout: Linear (no bias), BN, ReLU ...; BN(affine=False) last."""
    mods = []
    for i in range(layers):
        a, b = in_dim if i == 0 else hidden, out if i == layers - 1 else hidden
        mods.append(nn.Linear(a, b, bias=False))
        if i < layers - 1:
            mods += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        elif last_bn:
            mods.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*mods)


class MoCoResNet(nn.Module):
    """``MoCo_ResNet``'s module structure: base_encoder, momentum_encoder (fc = projector), predictor."""

    def __init__(self, arch=ARCH, dim=DIM, mlp_dim=MLP_DIM, t=T):
        super().__init__()
        import torchvision

        self.t = t
        self.base_encoder = torchvision.models.__dict__[arch](num_classes=mlp_dim, zero_init_residual=True)
        self.momentum_encoder = torchvision.models.__dict__[arch](num_classes=mlp_dim, zero_init_residual=True)
        hidden = self.base_encoder.fc.weight.shape[1]
        del self.base_encoder.fc, self.momentum_encoder.fc
        self.base_encoder.fc = mlp(2, hidden, mlp_dim, dim)
        self.momentum_encoder.fc = mlp(2, hidden, mlp_dim, dim)
        self.predictor = mlp(2, dim, mlp_dim, dim, last_bn=False)
        for b, m in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
            m.data.copy_(b.data)
            m.requires_grad = False

    def ctr(self, q, k):
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        logits = q @ k.T / self.t
        return F.cross_entropy(logits, torch.arange(q.shape[0])) * (2 * self.t)

    def forward(self, x1, x2, m):
        q1, q2 = self.predictor(self.base_encoder(x1)), self.predictor(self.base_encoder(x2))
        with torch.no_grad():
            for b, p in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
                p.data = p.data * m + b.data * (1.0 - m)
            k1, k2 = self.momentum_encoder(x1), self.momentum_encoder(x2)
        return self.ctr(q1, k2) + self.ctr(q2, k1)


class LARS(optim.Optimizer):
    """LARS with moco/optimizer.py's defaults dict and state (``mu``); no update for ndim <= 1 scaling."""

    def __init__(self, params, lr=0, weight_decay=0, momentum=0.9, trust_coefficient=0.001):
        super().__init__(
            params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        )

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if p.ndim > 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    pn, un = torch.norm(p), torch.norm(dp)
                    if pn > 0 and un > 0:
                        dp = dp.mul(g["trust_coefficient"] * pn / un)
                mu = self.state[p].setdefault("mu", torch.zeros_like(p))
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


def build(arch=ARCH, dim=DIM, mlp_dim=MLP_DIM):
    model = Wrapped(MoCoResNet(arch, dim, mlp_dim))
    return model, LARS(model.parameters(), LR, weight_decay=1e-6, momentum=0.9), torch.amp.GradScaler("cpu")


def train(model, opt, scaler, steps: int, seed: int, epoch: int = 99, epochs: int = 100):
    g = torch.Generator().manual_seed(seed)
    model.train()
    for i in range(steps):
        x = epoch + i / max(steps, 1)
        m = 1.0 - 0.5 * (1.0 + math.cos(math.pi * x / epochs)) * (1.0 - MOCO_M)  # --moco-m-cos
        x1, x2 = (torch.rand(4, 3, 32, 32, generator=g) for _ in range(2))
        loss = model(x1, x2, m)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()


def generate(out: Path, steps: int, epoch: int, seed: int) -> None:
    torch.manual_seed(seed)
    model, opt, scaler = build()
    train(model, opt, scaler, steps, seed, epoch - 1)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        "epoch": epoch,
        "arch": ARCH,
        "state_dict": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict(),
    }
    torch.save(state, out / f"checkpoint_{epoch - 1:04d}.pth.tar")
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / "checkpoint.tensors.pt")


def reload(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    sd = ckpt["state_dict"]
    model, opt, scaler = build(
        ckpt["arch"], sd["module.predictor.3.weight"].shape[0], sd["module.predictor.0.weight"].shape[0]
    )
    model.load_state_dict(sd)
    opt.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    params = list(model.parameters())
    with_mu = sum("mu" in opt.state[p] for p in params)
    train(model, opt, scaler, 1, seed=1)
    return {
        "epoch": ckpt["epoch"],
        "arch": ckpt["arch"],
        "params": len(params),
        "with_mu": with_mu,
        "group": sorted(k for k in opt.param_groups[0] if k != "params"),
        "scale": scaler.get_scale(),
    }


def main(argv=None) -> int:
    return generator_main(__doc__, generate, reload, 100, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
