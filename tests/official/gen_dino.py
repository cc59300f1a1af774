"""facebookresearch/dino's save path, reproduced (no official code copied).

Writes, into OUT:

* ``checkpoint.pth``: main_dino.py's ``save_dict`` for ``--arch resnet18`` (torchvision's ResNet,
  ``fc`` an identity, as ``MultiCropWrapper`` sets it) with a small ``DINOHead`` (hidden 64,
  bottleneck 32, out 128, GELU, ``last_layer = nn.utils.weight_norm(Linear)`` with ``weight_g``
  filled with 1 and frozen): ``{"student": DDP state dict (module.backbone.*, module.head.*),
  "teacher": the same keys (the teacher of a network with BatchNorm is DDP-wrapped too),
  "optimizer": AdamW over utils.get_params_groups (group 0 regularised, group 1 biases/norms with
  weight_decay 0.; lr and group 0's weight_decay numpy float64 from the cosine schedules),
  "epoch", "args": argparse.Namespace (main_dino.py's arguments, with rank/world_size/gpu as
  utils.init_distributed_mode adds them), "dino_loss": DINOLoss.state_dict() ({"center"}),
  "fp16_scaler": a CUDA GradScaler's state_dict (--use_fp16 true: scale, growth_factor,
  backoff_factor, growth_interval, _growth_tracker)}``. Two steps of main_dino.py's
  ``train_one_epoch``: teacher on the 2 global crops, student on 2 x 32 px + 2 x 16 px crops,
  ``DINOLoss`` (teacher temperature 0.04, student 0.1), ``clip_gradients(3.0)``, last layer's
  gradients cancelled (epoch 0 < freeze_last_layer 1), AdamW step, EMA teacher (momentum 0.996),
  centre update.
* ``checkpoint_vit.pth``: the same for ``--arch vit_tiny --patch_size 16`` (vision_transformer.py's
  ViT-Tiny/16; written here with timm's ``vit_tiny_patch16_224``, which has its module layout and
  keys): the teacher of a network without BatchNorm is not DDP-wrapped, so its keys have no
  ``module.`` (``backbone.cls_token``, ...), the student's have; ``args.arch`` is ``vit_tiny``.
  ``dino_vittiny16_pretrain.pth``: its teacher's backbone (the ``dino_deitsmall16_pretrain.pth`` layout).
* ``dino_resnet18_pretrain.pth``: a backbone-only release (the teacher's backbone state dict, as
  hubconf.py loads ``dino_resnet50_pretrain.pth`` into a torchvision ResNet with ``fc`` an identity).
* ``checkpoint.tensors.pt``, ``checkpoint_vit.tensors.pt`` (not official): student, teacher and
  centre tensors, plain.

``python gen_dino.py reload FILE`` is main_dino.py's resume path, ``utils.restart_from_checkpoint``
(``load_state_dict(strict=False)`` of student, teacher, optimizer, fp16 scaler, dino_loss), made
strict here (every student/teacher key present, none unexpected, the optimiser's state complete)
and followed by one more step; prints a JSON summary.

Checked against the official code (facebookresearch/dino 7c446df, ``git archive`` to /tmp/dino):
tests/official/check/dino_official.py runs main_dino.py's own ``DINOHead``, ``MultiCropWrapper``,
``DINOLoss``, ``get_params_groups``, ``cosine_scheduler`` and ``train_one_epoch`` (2 iterations,
gloo world size 1, real DDP for student and teacher, ``Tensor.cuda`` and ``torch.cuda.synchronize``
no-ops, fp16 off) with ``get_args_parser()``'s arguments and writes its ``save_dict`` (plus a
CUDA GradScaler's state dict: the script's own is disabled on CPU). Result (2026-12-05, torch
2.14.1 CPU): ``compare.py /tmp/dino_official/checkpoint.pth OUT/checkpoint.pth``: structure SAME
(top-level keys in the same order, student/teacher keys in the same order with the same shapes and
dtypes: both ``module.``-prefixed, optimizer groups and state keys), pickle globals SAME
(``_codecs.encode``, ``argparse.Namespace``, ``collections.OrderedDict``,
``numpy._core.multiarray.scalar``, ``numpy.dtype``, torch storages, ``_rebuild_tensor_v2``); the
``args`` fields the same, in the same order (only ``use_fp16`` differs: the check ran with fp16
off); ``reload`` of the official file: strict, 67 optimiser parameters (``weight_g`` is frozen, not
in it), 66 with AdamW state (``last_layer.weight_v`` has none: its gradients are cancelled in
epoch 0), one more step finite -- the same summary as for this generator's file.

The ViT file likewise (``dino_official.py /tmp/dino OUT vit_tiny``: vision_transformer.py's
``vit_tiny(patch_size=16, drop_path_rate=0.1)``, teacher without DDP as main_dino.py leaves it):
``compare.py OUT/checkpoint_vit.pth checkpoint_vit.pth``: structure SAME, pickle globals SAME;
``reload`` of both: strict, 157 optimiser parameters, 156 with state, one step finite.

The official repository's history (38 commits) has no other key names: ``DINOHead`` is
``mlp``/``last_layer`` from the first commit (58aabc0) on, and every ``save_dict`` holds ``dino_loss``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _nets import Wrapped, generator_main  # noqa: E402

HIDDEN, BOTTLENECK, OUT_DIM = 64, 32, 128
STEPS_PER_EPOCH, EPOCHS = 2, 100


class Head(nn.Module):
    """DINOHead's module layout: ``mlp`` (Linear, GELU, Linear, GELU, Linear), L2 normalise, ``last_layer``."""

    def __init__(self, in_dim, out_dim=OUT_DIM, hidden=HIDDEN, bottleneck=BOTTLENECK):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck)
        )
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.constant_(m.bias, 0)
        self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        self.last_layer.weight_g.data.fill_(1)
        self.last_layer.weight_g.requires_grad = False

    def forward(self, x):
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


class CropWrapper(nn.Module):
    """MultiCropWrapper's layout: ``backbone`` (fc an identity) per resolution, ``head`` on all."""

    def __init__(self, backbone, head):
        super().__init__()
        backbone.fc = nn.Identity()
        self.backbone, self.head = backbone, head

    def forward(self, crops):
        out, i = [], 0
        while i < len(crops):
            j = i
            while j < len(crops) and crops[j].shape[-1] == crops[i].shape[-1]:
                j += 1
            out.append(self.backbone(torch.cat(crops[i:j])))
            i = j
        return self.head(torch.cat(out))


def _backbone(arch: str):
    """torchvision's resnet18, or the ViT-Tiny/16 of vision_transformer.py (timm's ``vit_tiny_patch16_224``
    has its module layout and key names: cls_token, pos_embed, patch_embed.proj, blocks.N.{norm1,
    attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm; any input size, as DINO's own)."""
    if arch == "vit_tiny":
        import timm

        return timm.create_model("vit_tiny_patch16_224", num_classes=0, dynamic_img_size=True), 192
    from torchvision.models import resnet18

    return resnet18(), 512


def build(hidden=HIDDEN, bottleneck=BOTTLENECK, out_dim=OUT_DIM, arch="resnet18"):
    nets = [_backbone(arch) for _ in range(2)]
    student = Wrapped(CropWrapper(nets[0][0], Head(nets[0][1], out_dim, hidden, bottleneck)))
    teacher = CropWrapper(nets[1][0], Head(nets[1][1], out_dim, hidden, bottleneck))
    if arch == "resnet18":  # main_dino.py wraps the teacher in DDP when the network has BatchNorm
        teacher = Wrapped(teacher)
    getattr(teacher, "module", teacher).load_state_dict(student.module.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    regularized, not_regularized = [], []
    for name, p in student.named_parameters():
        if not p.requires_grad:
            continue
        (not_regularized if name.endswith(".bias") or len(p.shape) == 1 else regularized).append(p)
    opt = torch.optim.AdamW([{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}])
    return student, teacher, opt


def cosine(base, final, epochs, niter, warmup_epochs=0):
    warm = np.linspace(0, base, warmup_epochs * niter) if warmup_epochs else np.array([])
    iters = np.arange(epochs * niter - warmup_epochs * niter)
    return np.concatenate((warm, final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))))


def args_namespace(arch: str = "resnet18") -> argparse.Namespace:
    """main_dino.py's arguments for this run (get_args_parser's defaults, init_distributed_mode's additions)."""
    return argparse.Namespace(
        arch=arch,
        patch_size=16,
        out_dim=OUT_DIM,
        norm_last_layer=True,
        momentum_teacher=0.996,
        use_bn_in_head=False,
        warmup_teacher_temp=0.04,
        teacher_temp=0.04,
        warmup_teacher_temp_epochs=0,
        use_fp16=True,
        weight_decay=0.04,
        weight_decay_end=0.4,
        clip_grad=3.0,
        batch_size_per_gpu=4,
        epochs=EPOCHS,
        freeze_last_layer=1,
        lr=0.0005,
        warmup_epochs=10,
        min_lr=1e-6,
        optimizer="adamw",
        drop_path_rate=0.1,
        global_crops_scale=(0.4, 1.0),
        local_crops_number=2,
        local_crops_scale=(0.05, 0.4),
        data_path="/path/to/imagenet/train/",
        output_dir=".",
        saveckp_freq=20,
        seed=0,
        num_workers=10,
        dist_url="env://",
        local_rank=0,
        rank=0,
        world_size=1,
        gpu=0,
    )


def train(student, teacher, opt, center, steps: int, seed: int, start: int = 0, epoch: int = 0):
    """main_dino.py's train_one_epoch, fp32, one process."""
    g = torch.Generator().manual_seed(seed)
    a = args_namespace()
    lr = cosine(a.lr * a.batch_size_per_gpu / 256.0, a.min_lr, EPOCHS, STEPS_PER_EPOCH, a.warmup_epochs)
    wd = cosine(a.weight_decay, a.weight_decay_end, EPOCHS, STEPS_PER_EPOCH)
    mom = cosine(a.momentum_teacher, 1, EPOCHS, STEPS_PER_EPOCH)
    student.train()
    teacher.train()
    for it in range(start, start + steps):
        for i, group in enumerate(opt.param_groups):
            group["lr"] = lr[it]
            if i == 0:
                group["weight_decay"] = wd[it]
        crops = [torch.rand(4, 3, 32, 32, generator=g) for _ in range(2)]
        crops += [torch.rand(4, 3, 16, 16, generator=g) for _ in range(2)]
        t_out = teacher(crops[:2])
        s_out = student(crops)
        s_chunks = (s_out / 0.1).chunk(4)
        q = F.softmax((t_out - center) / a.teacher_temp, dim=-1).detach().chunk(2)
        loss, n = 0, 0
        for iq, qq in enumerate(q):
            for v in range(len(s_chunks)):
                if v != iq:
                    loss += torch.sum(-qq * F.log_softmax(s_chunks[v], dim=-1), dim=-1).mean()
                    n += 1
        loss /= n
        with torch.no_grad():
            batch = t_out.sum(0, keepdim=True) / len(t_out)
            center.copy_(center * 0.9 + batch * (1 - 0.9))
        opt.zero_grad()
        loss.backward()
        for _, p in student.named_parameters():
            if p.grad is not None:
                coef = a.clip_grad / (p.grad.data.norm(2) + 1e-6)
                if coef < 1:
                    p.grad.data.mul_(coef)
        if epoch < a.freeze_last_layer:
            for name, p in student.named_parameters():
                if "last_layer" in name:
                    p.grad = None
        opt.step()
        with torch.no_grad():
            m = mom[it]
            for pq, pk in zip(student.module.parameters(), getattr(teacher, "module", teacher).parameters()):
                pk.data.mul_(m).add_((1 - m) * pq.detach().data)
    return float(loss.detach())


def generate(out: Path, steps: int, epoch: int, seed: int) -> None:
    for arch, name in (("resnet18", "checkpoint"), ("vit_tiny", "checkpoint_vit")):
        _generate(out, steps, epoch, seed, arch, name)


def _generate(out: Path, steps: int, epoch: int, seed: int, arch: str, name: str) -> None:
    torch.manual_seed(seed)
    student, teacher, opt = build(arch=arch)
    center = torch.zeros(1, OUT_DIM)
    train(student, teacher, opt, center, steps, seed)
    out.mkdir(parents=True, exist_ok=True)
    save_dict = {
        "student": student.state_dict(),
        "teacher": teacher.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": epoch,
        "args": args_namespace(arch),
        "dino_loss": OrderedDict(center=center),
    }
    save_dict["fp16_scaler"] = {
        "scale": 65536.0,
        "growth_factor": 2.0,
        "backoff_factor": 0.5,
        "growth_interval": 2000,
        "_growth_tracker": steps,
    }
    torch.save(save_dict, out / f"{name}.pth")
    release = "dino_resnet18_pretrain.pth" if arch == "resnet18" else "dino_vittiny16_pretrain.pth"
    torch.save(getattr(teacher, "module", teacher).backbone.state_dict(), out / release)
    plain = {f"student.{k}": v.clone() for k, v in student.state_dict().items()}
    plain.update({f"teacher.{k}": v.clone() for k, v in teacher.state_dict().items()})
    plain["center"] = center.clone()
    torch.save(plain, out / f"{name}.tensors.pt")


def reload(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    s_sd = ckpt["student"]
    v = s_sd["module.head.last_layer.weight_v"]
    arch = "vit_tiny" if "module.backbone.cls_token" in s_sd else "resnet18"
    student, teacher, opt = build(s_sd["module.head.mlp.0.weight"].shape[0], v.shape[1], v.shape[0], arch)
    msgs = [student.load_state_dict(s_sd, strict=False), teacher.load_state_dict(ckpt["teacher"], strict=False)]
    strict = all(not m.missing_keys and not m.unexpected_keys for m in msgs)
    if "optimizer" in ckpt:  # restart_from_checkpoint skips a key the file lacks ("not found")
        opt.load_state_dict(ckpt["optimizer"])
    params = [p for g in opt.param_groups for p in g["params"]]
    with_state = sum(bool(opt.state[p]) for p in params)
    center = torch.zeros(1, v.shape[0])
    if "dino_loss" in ckpt:
        center.copy_(ckpt["dino_loss"]["center"])
    if "fp16_scaler" in ckpt:
        torch.amp.GradScaler("cpu").load_state_dict(ckpt["fp16_scaler"])
    loss = train(student, teacher, opt, center, 1, seed=1, start=5, epoch=ckpt["epoch"])
    return {
        "epoch": ckpt["epoch"],
        "strict": strict,
        "params": len(params),
        "with_state": with_state,
        "keys": list(ckpt),
        "center": "dino_loss" in ckpt,
        "args_arch": getattr(ckpt.get("args"), "arch", None),
        "loss_finite": math.isfinite(loss),
    }


def main(argv=None) -> int:
    return generator_main(__doc__, generate, reload, 100, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
