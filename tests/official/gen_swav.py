"""facebookresearch/swav's save paths, reproduced (no official code copied).

Writes, into OUT:

* ``checkpoint.pth.tar``: main_swav.py's ``save_dict``: ``{"epoch", "state_dict":
  model.state_dict(), "optimizer": optimizer.state_dict(), "amp": apex.amp.state_dict()}`` (``amp``
  as with the default ``--use_fp16 true``). ``model`` is the DistributedDataParallel-wrapped
  ``src/resnet50.py`` ResNet (``module.<trunk>``, ``module.projection_head.{0,1,3}``,
  ``module.prototypes.weight``). The optimizer is apex's ``LARC`` wrapping ``torch.optim.SGD``
  (momentum 0.9, weight decay); ``LARC.state_dict()`` returns the wrapped SGD's, so the file holds
  an SGD state dict: one group, ``momentum_buffer`` per parameter, and ``lr`` a numpy float64 (the
  script assigns ``lr_schedule[iteration]``, an element of a numpy array, every step). The first
  step runs with the prototypes' gradients cancelled (``freeze_prototypes_niters``), as the script
  does. ``amp`` is ``OrderedDict(loss_scaler0={"loss_scale": 65536.0, "unskipped": steps})``:
  apex/amp/frontend.py's ``state_dict`` over one dynamic ``LossScaler`` (init scale 2.**16) after
  ``steps`` steps without overflow (read from apex's source, not run: apex amp needs CUDA).
* ``swav_800ep_pretrain.pth.tar``: the released model, the DDP ``model.state_dict()`` itself
  (hubconf.py strips ``module.`` from its keys and eval_linear.py reads it without a wrapper).
* ``checkpoint.tensors.pt`` (not official): the model's tensors, plain, for the tests.

``python gen_swav.py reload FILE`` is main_swav.py's ``restart_from_checkpoint`` path: model
``load_state_dict(ckpt["state_dict"])``, the LARC-wrapped SGD ``load_state_dict(ckpt["optimizer"])``
and one more step; prints a JSON summary.

Checked against the official code (facebookresearch/swav 06b1b7c, cloned to /tmp; apex's
``apex/parallel/LARC.py`` taken from NVIDIA/apex before its removal (commit cb65b8ed^), the only
apex module used, pure Python; ``apex.amp`` stubbed, so ``amp`` is not covered by this check;
``pandas``, imported by src/logger.py for its stats table, stubbed as an empty module):
tests/official/check/swav_official.py builds ``src.resnet50.ResNet(BasicBlock, [2, 2, 2, 2],
normalize=True, hidden_mlp=64, output_dim=32, nmb_prototypes=40)``, wraps it in a real DDP (gloo,
world size 1), builds SGD + LARC as main_swav.py does, runs the official ``train()`` for 2
iterations of 2x32px + 2x16px crops (``Tensor.cuda`` patched to a no-op for CPU,
``freeze_prototypes_niters=1``, ``use_fp16`` false) and saves with the script's ``save_dict``.
tests/official/check/compare.py: same top-level keys, same ``state_dict`` keys in the same order,
shapes and dtypes, same optimizer ``state`` indices (every parameter) and keys
(``momentum_buffer``), same ``param_groups`` keys and value types (``lr`` numpy float64), same
pickle globals in ``data.pkl`` (``collections.OrderedDict``, ``numpy._core.multiarray.scalar``,
``numpy.dtype``, ``_codecs.encode``, torch storages and ``_rebuild_tensor_v2``); the release file likewise.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _nets import FbResNet, Wrapped, generator_main  # noqa: E402

HIDDEN, OUT_DIM, PROTOTYPES = 64, 32, 40
FREEZE_PROTOTYPES_NITERS = 1


class LARCWrapper:
    """apex's LARC (trust coefficient 0.001, no clipping) around an optimizer; its state is the inner one's."""

    def __init__(self, optimizer, trust_coefficient=0.001, eps=1e-8):
        self.optim, self.trust, self.eps = optimizer, trust_coefficient, eps

    @property
    def param_groups(self):
        return self.optim.param_groups

    def state_dict(self):
        return self.optim.state_dict()

    def load_state_dict(self, sd):
        self.optim.load_state_dict(sd)

    def zero_grad(self):
        self.optim.zero_grad()

    @torch.no_grad()
    def step(self):
        decays = []
        for g in self.optim.param_groups:
            decays.append(g.get("weight_decay", 0))
            g["weight_decay"] = 0
            for p in g["params"]:
                if p.grad is None:
                    continue
                pn, gn = p.norm(), p.grad.norm()
                if pn != 0 and gn != 0:
                    rate = self.trust * pn / (gn + pn * decays[-1] + self.eps)
                    p.grad.add_(p, alpha=decays[-1]).mul_(rate)
        self.optim.step()
        for g, d in zip(self.optim.param_groups, decays):
            g["weight_decay"] = d


def build(hidden=HIDDEN, out_dim=OUT_DIM, prototypes=PROTOTYPES, base_lr=0.6):
    model = Wrapped(FbResNet(hidden_mlp=hidden, output_dim=out_dim, prototypes=prototypes))
    sgd = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=0.9, weight_decay=1e-6)
    return model, LARCWrapper(sgd)


@torch.no_grad()
def sinkhorn(scores, eps=0.05, iters=3):
    q = torch.exp(scores / eps).t()
    k, b = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True) * k
        q /= q.sum(dim=0, keepdim=True) * b
    return (q * b).t()


def train(model, opt, steps: int, seed: int, start: int = 0):
    g = torch.Generator().manual_seed(seed)
    schedule = np.linspace(0.3, 0.6, 10)  # main_swav.py's warm-up np.linspace (numpy float64 lrs)
    model.train()
    for it in range(start, start + steps):
        for group in opt.param_groups:
            group["lr"] = schedule[it]
        with torch.no_grad():
            w = model.module.prototypes.weight
            w.copy_(F.normalize(w.data.clone(), dim=1, p=2))
        big = [torch.rand(4, 3, 32, 32, generator=g) for _ in range(2)]
        small = [torch.rand(4, 3, 16, 16, generator=g) for _ in range(2)]
        _, out = _forward(model, big, small)
        bs, crops = 4, 4
        loss = 0
        for crop_id in (0, 1):
            q = sinkhorn(out[bs * crop_id : bs * (crop_id + 1)].detach())
            sub = 0
            for v in [c for c in range(crops) if c != crop_id]:
                sub -= torch.mean(torch.sum(q * F.log_softmax(out[bs * v : bs * (v + 1)] / 0.1, dim=1), dim=1))
            loss += sub / (crops - 1)
        opt.zero_grad()
        (loss / 2).backward()
        if it < FREEZE_PROTOTYPES_NITERS:
            for name, p in model.named_parameters():
                if "prototypes" in name:
                    p.grad = None
        opt.step()


def _forward(model, big, small):
    net = model.module
    feats = torch.cat([net.trunk(torch.cat(big)), net.trunk(torch.cat(small))])
    z = F.normalize(net.projection_head(feats), dim=1, p=2)
    return z, net.prototypes(z)


def generate(out: Path, steps: int, epoch: int, seed: int) -> None:
    torch.manual_seed(seed)
    model, opt = build()
    train(model, opt, steps, seed)
    out.mkdir(parents=True, exist_ok=True)
    save_dict = {
        "epoch": epoch,
        "state_dict": model.state_dict(),
        "optimizer": opt.state_dict(),
        "amp": OrderedDict(loss_scaler0={"loss_scale": 65536.0, "unskipped": steps}),
    }
    torch.save(save_dict, out / "checkpoint.pth.tar")
    torch.save(model.state_dict(), out / "swav_800ep_pretrain.pth.tar")
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / "checkpoint.tensors.pt")


def reload(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    sd = ckpt["state_dict"]
    model, opt = build(
        sd["module.projection_head.0.weight"].shape[0],
        sd["module.projection_head.3.weight"].shape[0],
        sd["module.prototypes.weight"].shape[0],
    )
    model.load_state_dict(sd)
    opt.load_state_dict(ckpt["optimizer"])
    params = list(model.parameters())
    with_buf = sum("momentum_buffer" in opt.optim.state[p] for p in params)
    lr_type = type(opt.param_groups[0]["lr"]).__name__
    train(model, opt, 1, seed=1, start=5)
    return {
        "epoch": ckpt["epoch"],
        "params": len(params),
        "with_momentum": with_buf,
        "lr_type": lr_type,
        "keys": sorted(ckpt),
    }


def main(argv=None) -> int:
    return generator_main(__doc__, generate, reload, 800, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
