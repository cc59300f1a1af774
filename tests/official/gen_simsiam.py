"""facebookresearch/simsiam's ``main_simsiam.py`` save path, reproduced (no official code copied).

Writes, into OUT:

* ``checkpoint_0099.pth.tar``: ``{'epoch', 'arch', 'state_dict': model.state_dict(),
  'optimizer': optimizer.state_dict()}`` (main_simsiam.py's ``save_checkpoint`` call). ``model``
  is the DistributedDataParallel-wrapped ``simsiam.builder.SimSiam`` over torchvision's own
  ``resnet18`` (``module.encoder.*`` with the 3-layer projector in ``encoder.fc``, ending in a
  BatchNorm1d without affine; ``module.predictor.*``); the optimizer is ``torch.optim.SGD`` over
  the two ``--fix-pred-lr`` groups (README's command): ``{'params': encoder, 'fix_lr': False}``,
  ``{'params': predictor, 'fix_lr': True}``, momentum 0.9, weight decay 1e-4. ``encoder.fc.6.bias``
  has ``requires_grad=False`` (the builder's "hack"), so it has no ``momentum_buffer``: the state
  holds every parameter but that one.
* ``checkpoint.tensors.pt`` (not official): the model's tensors, plain, for the tests.

``python gen_simsiam.py reload FILE`` is main_simsiam.py's ``--resume`` path: ``model.load_state_dict
(checkpoint['state_dict'])``, ``optimizer.load_state_dict(checkpoint['optimizer'])``, one more step;
prints a JSON summary.

Checked against the official code (facebookresearch/simsiam a7bc177, cloned to /tmp, nothing
installed or stubbed): tests/official/check/simsiam_official.py builds ``simsiam.builder.SimSiam(
torchvision.models.resnet18, 64, 16)``, wraps it in a real DDP (gloo, world size 1), builds the
optimizer from main_simsiam.py's ``optim_params`` with ``fix_pred_lr``, runs the official
``train()`` for 2 batches of 2 x 4 x 32px views and its ``adjust_learning_rate`` for epoch 99 of
100, and saves with main_simsiam.py's own ``save_checkpoint({...})`` call.
tests/official/check/compare.py: same top-level keys in the same order, same ``state_dict`` keys,
order, shapes and dtypes, same optimizer ``state`` indices (``encoder.fc.6.bias``'s index absent in
both) and keys (``momentum_buffer``), same ``param_groups`` keys and value types, same pickle globals
in ``data.pkl`` (``collections.OrderedDict``, torch storages and ``_rebuild_tensor_v2``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _nets import SimSiamNet, Wrapped, generator_main  # noqa: E402

ARCH, DIM, PRED_DIM = "resnet18", 64, 16
INIT_LR = 0.05 * 8 / 256


def build(arch=ARCH, dim=DIM, pred_dim=PRED_DIM):
    model = Wrapped(SimSiamNet(arch, dim, pred_dim))
    groups = [
        {"params": model.module.encoder.parameters(), "fix_lr": False},
        {"params": model.module.predictor.parameters(), "fix_lr": True},
    ]
    return model, torch.optim.SGD(groups, INIT_LR, momentum=0.9, weight_decay=1e-4)


def set_lr(opt, epoch: int, epochs: int = 100):
    lr = INIT_LR * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    for g in opt.param_groups:
        g["lr"] = INIT_LR if g.get("fix_lr") else lr


def train(model, opt, steps: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        img = torch.rand(4, 3, 32, 32, generator=g)
        (z1, p1), (z2, p2) = model(img), model(img.flip(-1) + 0.1 * torch.randn(img.shape, generator=g))
        loss = -(F.cosine_similarity(p1, z2.detach()).mean() + F.cosine_similarity(p2, z1.detach()).mean()) * 0.5
        opt.zero_grad()
        loss.backward()
        opt.step()


def generate(out: Path, steps: int, epoch: int, seed: int) -> None:
    torch.manual_seed(seed)
    model, opt = build()
    set_lr(opt, epoch - 1)
    train(model, opt, steps, seed)
    out.mkdir(parents=True, exist_ok=True)
    state = {"epoch": epoch, "arch": ARCH, "state_dict": model.state_dict(), "optimizer": opt.state_dict()}
    torch.save(state, out / f"checkpoint_{epoch - 1:04d}.pth.tar")
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / "checkpoint.tensors.pt")


def reload(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    sd = ckpt["state_dict"]
    model, opt = build(ckpt["arch"], sd["module.predictor.3.weight"].shape[0], sd["module.predictor.0.weight"].shape[0])
    model.load_state_dict(sd)
    opt.load_state_dict(ckpt["optimizer"])
    params = list(model.parameters())
    with_buf = sum("momentum_buffer" in opt.state[p] for p in params)
    fix = [g.get("fix_lr") for g in opt.param_groups]
    train(model, opt, 1, seed=1)
    return {
        "epoch": ckpt["epoch"],
        "arch": ckpt["arch"],
        "params": len(params),
        "with_momentum": with_buf,
        "fix_lr": fix,
    }


def main(argv=None) -> int:
    return generator_main(__doc__, generate, reload, 100, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
