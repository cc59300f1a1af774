"""facebookresearch/moco-v3's ``main_moco.py`` save path for a ViT, reproduced on a tiny ViT (no
official code copied).

Writes, into OUT:

* ``checkpoint_0299.pth.tar``: ``{'epoch', 'arch', 'state_dict', 'optimizer', 'scaler'}`` as
  main_moco.py's ``save_checkpoint`` call writes it for ``-a vit_* --optimizer=adamw --stop-grad-conv1
  --moco-t=.2``: ``model`` is the DDP-wrapped ``moco.builder.MoCo_ViT`` whose encoders are
  vits.py's ``VisionTransformerMoCo`` (a timm ``VisionTransformer``: ``cls_token``, ``pos_embed``
  = fixed 2-D sin-cos, ``requires_grad=False``; ``patch_embed.proj`` frozen by
  ``--stop-grad-conv1``; ``blocks.*``, ``norm``; the projector in ``head``: 3 layers, Linear without
  bias, BN, ReLU, ..., BN(affine=False)), ``module.momentum_encoder.*`` alike, ``module.predictor.*``
  (2 layers ending in BN(affine=False): ViTs keep ``last_bn``). Tiny: 32 px images, patch 8,
  width 32, depth 2, 4 heads, ``--moco-dim 16 --moco-mlp-dim 64``. The optimizer is
  ``torch.optim.AdamW(model.parameters(), lr, weight_decay=.1)`` (one group); its state holds
  ``step, exp_avg, exp_avg_sq`` for the parameters that got a gradient: the base encoder less
  ``pos_embed`` and ``patch_embed`` (frozen), and the predictor. ``arch`` is written as
  ``vit_small`` would be, but the weights are this tiny ViT's: the tests load it with
  ``--arch timm:vit_small_patch16_224:img_size=32,patch_size=8,embed_dim=32,depth=2,num_heads=4``.
* ``checkpoint.tensors.pt`` (not official): the model's tensors, plain, and ``outputs``: the
  eval-mode outputs of ``base_encoder``, ``predictor`` and ``momentum_encoder`` on fixed images,
  for the tests to check that e2mc's timm ViT computes what the official one does.

``python gen_mocov3_vit.py reload FILE`` is main_moco.py's ``--resume`` path: ``model.load_state_dict``
(strict), ``optimizer.load_state_dict``, ``scaler.load_state_dict``, one more step; prints JSON.

Checked against the official code (facebookresearch/moco-v3 c349e6e, worktree in /tmp, timm 1.0.31):
tests/official/check/mocov3_vit_official.py builds ``moco.builder.MoCo_ViT`` over vits.py's own
``VisionTransformerMoCo`` with this tiny configuration (``stop_grad_conv1=True``), DDP (gloo, world
size 1), AdamW and a GradScaler as main_worker does, runs main_moco.py's ``train()`` for 2 batches
and its ``save_checkpoint``. tests/official/check/compare.py on the two ``checkpoint_0299.pth.tar``:
"SAME" structure (top-level keys in order; ``state_dict`` keys, order, shapes, dtypes; optimizer
``state`` entries (the frozen ``pos_embed`` / ``patch_embed`` and the momentum encoder's positions
absent in both) and keys; ``param_groups`` keys and value types; ``scaler``) and "SAME" pickle
globals. The same script, on vits.py's full ``vit_small`` (12 heads) with stop-grad, loads the
official file into e2mc's ``timm:vit_small_patch16_224:num_heads=12`` and finds the eval-mode
outputs of base encoder, predictor and momentum encoder equal (max abs difference 0 on CPU).
"""

from __future__ import annotations

import math
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _nets import Wrapped, generator_main  # noqa: E402
from gen_mocov3 import mlp  # noqa: E402

DIM, MLP_DIM, T, MOCO_M, LR = 16, 64, 0.2, 0.99, 1.5e-4 * 8 / 256
VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=4, qkv_bias=True)


def sincos(grid: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """The fixed 2-D sin-cos position embedding (w then h, sin then cos), a zero row for [cls] first."""
    gw, gh = torch.meshgrid(
        torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij"
    )
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    w, h = gw.flatten()[:, None] * omega, gh.flatten()[:, None] * omega
    emb = torch.cat([torch.sin(w), torch.cos(w), torch.sin(h), torch.cos(h)], dim=1)
    return torch.cat([torch.zeros(1, dim), emb])[None]


def vit(num_classes: int) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    net = VisionTransformer(num_classes=num_classes, norm_layer=partial(nn.LayerNorm, eps=1e-6), **VIT)
    net.pos_embed = nn.Parameter(sincos(VIT["img_size"] // VIT["patch_size"], VIT["embed_dim"]), requires_grad=False)
    net.patch_embed.proj.weight.requires_grad = False  # --stop-grad-conv1
    net.patch_embed.proj.bias.requires_grad = False
    return net


class MoCoViT(nn.Module):
    """``MoCo_ViT``'s module structure: base_encoder, momentum_encoder (head = projector), predictor."""

    def __init__(self, dim=DIM, mlp_dim=MLP_DIM, t=T):
        super().__init__()
        self.t = t
        self.base_encoder, self.momentum_encoder = vit(mlp_dim), vit(mlp_dim)
        hidden = self.base_encoder.head.weight.shape[1]
        del self.base_encoder.head, self.momentum_encoder.head
        self.base_encoder.head = mlp(3, hidden, mlp_dim, dim)
        self.momentum_encoder.head = mlp(3, hidden, mlp_dim, dim)
        self.predictor = mlp(2, dim, mlp_dim, dim)
        for b, m in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
            m.data.copy_(b.data)
            m.requires_grad = False

    def ctr(self, q, k):
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        return F.cross_entropy(q @ k.T / self.t, torch.arange(q.shape[0])) * (2 * self.t)

    def forward(self, x1, x2, m):
        q1, q2 = self.predictor(self.base_encoder(x1)), self.predictor(self.base_encoder(x2))
        with torch.no_grad():
            for b, p in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
                p.data = p.data * m + b.data * (1.0 - m)
            k1, k2 = self.momentum_encoder(x1), self.momentum_encoder(x2)
        return self.ctr(q1, k2) + self.ctr(q2, k1)


def build():
    model = Wrapped(MoCoViT())
    return model, torch.optim.AdamW(model.parameters(), LR, weight_decay=0.1), torch.amp.GradScaler("cpu")


def train(model, opt, scaler, steps: int, seed: int, epoch: int = 298, epochs: int = 300):
    g = torch.Generator().manual_seed(seed)
    model.train()
    for i in range(steps):
        m = 1.0 - 0.5 * (1.0 + math.cos(math.pi * (epoch + i / max(steps, 1)) / epochs)) * (1.0 - MOCO_M)
        x1, x2 = (torch.rand(4, 3, 32, 32, generator=g) for _ in range(2))
        loss = model(x1, x2, m)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()


def outputs(model) -> dict:
    """Eval-mode outputs on fixed images: what e2mc's model must compute from the same weights."""
    net = model.module
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    net.eval()
    with torch.no_grad():
        z = net.base_encoder(x)
        out = {"x": x, "z": z, "p": net.predictor(z), "k": net.momentum_encoder(x)}
    net.train()
    return out


def generate(out: Path, steps: int, epoch: int, seed: int) -> None:
    torch.manual_seed(seed)
    model, opt, scaler = build()
    train(model, opt, scaler, steps, seed, epoch - 1)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        "epoch": epoch,
        "arch": "vit_small",
        "state_dict": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict(),
    }
    torch.save(state, out / f"checkpoint_{epoch - 1:04d}.pth.tar")
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"tensors": tensors, "outputs": outputs(model)}, out / "checkpoint.tensors.pt")


def reload(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model, opt, scaler = build()
    model.load_state_dict(ckpt["state_dict"])
    opt.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    params = list(model.parameters())
    with_moments = sum("exp_avg" in opt.state[p] for p in params)
    train(model, opt, scaler, 1, seed=1)
    return {"epoch": ckpt["epoch"], "arch": ckpt["arch"], "params": len(params), "with_moments": with_moments}


def main(argv=None) -> int:
    return generator_main(__doc__, generate, reload, 300, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
