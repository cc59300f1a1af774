"""facebookresearch/vicreg's ``main_vicreg.py`` save path, reproduced (no official code copied).

Writes, into OUT, what main_vicreg.py writes into ``--exp-dir``:

* ``model.pth`` = ``dict(epoch=, model=model.state_dict(), optimizer=optimizer.state_dict())``,
  ``model`` being the DistributedDataParallel-wrapped ``VICReg`` (keys ``module.backbone.*``,
  ``module.projector.*``) and ``optimizer`` its ``LARS`` after ``--steps`` steps: one param group
  ``{lr, weight_decay, momentum, eta, weight_decay_filter, lars_adaptation_filter, params}`` whose
  two filters are the function ``exclude_bias_and_norm`` (pickled as a global
  ``<module>.exclude_bias_and_norm``: ``__main__`` when this file runs as a script, as under
  ``torch.distributed.launch``; ``main_vicreg`` when run by ``as_module.py main_vicreg``, as under
  submitit) and state ``{i: {"mu": tensor}}`` for every parameter;
* ``resnet50.pth`` = ``model.module.backbone.state_dict()`` (the name main_vicreg.py uses
  whatever the arch);
* ``model.tensors.pt`` (not official): the model's tensors, plain, for the tests to compare.

``python gen_vicreg.py reload FILE`` is main_vicreg.py's resume path: builds the model and LARS,
``torch.load`` s FILE (weights_only=False, as the official code on the torch it was written for),
``model.load_state_dict(ckpt["model"])``, ``optimizer.load_state_dict(ckpt["optimizer"])``,
checks the filters are this module's ``exclude_bias_and_norm`` again and takes one step; prints
a JSON summary.

Checked against the official code (commit 4e12602 of facebookresearch/vicreg, cloned to /tmp,
nothing installed): tests/official/check/vicreg_official.py builds the official ``VICReg``
(``resnet.ResNet(BasicBlock, [2, 2, 2, 2])`` registered as an arch, ``--mlp 64-64-64``), wraps it
in a real DistributedDataParallel (gloo, world size 1; SyncBatchNorm conversion skipped: CPU),
builds the official ``LARS`` with ``exclude_bias_and_norm``, runs 2 steps of the official
``VICReg.forward`` loss and saves with main_vicreg.py's own ``state = dict(...)`` line, once with
main_vicreg.py exec'd as ``__main__`` and once imported as ``main_vicreg``.
tests/official/check/compare.py then compared this generator's files with those: same top-level
keys, same ``model`` keys in the same order with the same shapes and dtypes, same optimizer
``state`` indices and per-parameter keys (``mu``) and shapes, same ``param_groups`` keys, and the
same pickle globals in ``data.pkl`` (pickletools scan: ``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage``/``LongStorage``, ``__main__`` resp.
``main_vicreg.exclude_bias_and_norm``); ``resnet50.pth`` likewise (keys, shapes, globals).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import optim

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _nets import VICRegNet, Wrapped, generator_main  # noqa: E402

MLP = "64-64-64"


def exclude_bias_and_norm(p):
    return p.ndim == 1


class LARS(optim.Optimizer):
    """LARS with main_vicreg.py's defaults dict and state (``mu`` per parameter)."""

    def __init__(
        self, params, lr, weight_decay=0, momentum=0.9, eta=0.001, weight_decay_filter=None, lars_adaptation_filter=None
    ):
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
                if g["weight_decay_filter"] is None or not g["weight_decay_filter"](p):
                    d = d + g["weight_decay"] * p
                if g["lars_adaptation_filter"] is None or not g["lars_adaptation_filter"](p):
                    pn, dn = p.norm(), d.norm()
                    trust = g["eta"] * pn / dn if pn > 0 and dn > 0 else 1.0
                    d = d * trust
                mu = self.state[p].setdefault("mu", torch.zeros_like(p))
                mu.mul_(g["momentum"]).add_(d)
                p.sub_(g["lr"] * mu)


def vicreg_loss(x, y):
    inv = F.mse_loss(x, y)
    x, y = x - x.mean(0), y - y.mean(0)
    std = sum(torch.relu(1 - torch.sqrt(v.var(0) + 1e-4)).mean() / 2 for v in (x, y))
    n, d = x.shape
    cov = 0
    for v in (x, y):
        c = v.T @ v / (n - 1)
        cov = cov + (c.pow(2).sum() - c.diagonal().pow(2).sum()) / d
    return 25 * inv + 25 * std + cov


def build(mlp: str = MLP):
    model = Wrapped(VICRegNet(mlp))
    opt = LARS(
        model.parameters(),
        lr=0,
        weight_decay=1e-6,
        weight_decay_filter=exclude_bias_and_norm,
        lars_adaptation_filter=exclude_bias_and_norm,
    )
    return model, opt


def train(model, opt, steps: int, seed: int, start: int = 0):
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(start, start + steps):
        lr = 0.2 * 8 / 256 * (step + 1) / 10  # main_vicreg.py's warm-up: base_lr * batch / 256 * step / warmup
        for group in opt.param_groups:
            group["lr"] = lr
        img = torch.rand(8, 3, 32, 32, generator=g)
        x, y = img + 0.1 * torch.randn(img.shape, generator=g), img.flip(-1)
        opt.zero_grad()
        vicreg_loss(model(x), model(y)).backward()
        opt.step()


def generate(out: Path, steps: int, epoch: int, seed: int) -> None:
    torch.manual_seed(seed)
    model, opt = build()
    train(model, opt, steps, seed)
    out.mkdir(parents=True, exist_ok=True)
    state = dict(epoch=epoch, model=model.state_dict(), optimizer=opt.state_dict())
    torch.save(state, out / "model.pth")
    torch.save(model.module.backbone.state_dict(), out / "resnet50.pth")
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / "model.tensors.pt")


def reload(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    proj = [k for k in ckpt["model"] if k.startswith("module.projector.") and k.endswith(".weight")]
    mlp = "-".join(str(ckpt["model"][k].shape[0]) for k in proj if ckpt["model"][k].dim() == 2)
    model, opt = build(mlp)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    same = all(
        g["weight_decay_filter"] is exclude_bias_and_norm and g["lars_adaptation_filter"] is exclude_bias_and_norm
        for g in opt.param_groups
    )
    with_mu = sum("mu" in opt.state[p] for p in model.parameters())
    train(model, opt, 1, seed=1, start=5)
    return {
        "epoch": ckpt["epoch"],
        "filters_are_this_module": same,
        "module": exclude_bias_and_norm.__module__,
        "params": len(list(model.parameters())),
        "with_mu": with_mu,
    }


def main(argv=None) -> int:
    return generator_main(__doc__, generate, reload, 100, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
