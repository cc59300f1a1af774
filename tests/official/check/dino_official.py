"""Write DINO's checkpoint.pth with facebookresearch/dino's own code, on CPU.

Usage: dino_official.py REPO OUT. main_dino.py's ``get_args_parser`` (``torch.hub.list`` of the
XCiT models patched to ``[]``: no network), ``utils.MultiCropWrapper``, ``vision_transformer.DINOHead``,
``utils.get_params_groups``, ``utils.cosine_scheduler``, ``DINOLoss`` and ``train_one_epoch``
(2 iterations of 2 x 32 px + 2 x 16 px crops) run as main_dino.py's ``train_dino`` wires them,
for ``--arch resnet18 --out_dim 128 --use_fp16 false --batch_size_per_gpu 4 --local_crops_number 2``
with a DINOHead of hidden 64 / bottleneck 32 (DINOHead's own keyword arguments); gloo world size 1,
real DDP around student and teacher (a network with BatchNorm), ``Tensor.cuda`` and
``torch.cuda.synchronize`` no-ops, MetricLogger's CUDA all-reduce skipped. The ``save_dict`` is
the script's, with ``fp16_scaler`` the state dict of an enabled CUDA GradScaler (the default
``--use_fp16 true``; a CPU-only torch cannot enable one, so its fields are written as
``GradScaler.state_dict`` returns them: scale, growth_factor, backoff_factor, growth_interval,
_growth_tracker).

Result (2026-12-05, dino 7c446df, torch 2.14.1 CPU), ``python tests/official/check/compare.py
/tmp/dino_official/checkpoint.pth /tmp/gd/checkpoint.pth``: see tests/official/gen_dino.py.
"""

import sys
import tempfile
from pathlib import Path

REPO, out = sys.argv[1], Path(sys.argv[2])
ARCH = sys.argv[3] if len(sys.argv) > 3 else "resnet18"  # or vit_tiny (vision_transformer.py, patch 16)
sys.path.insert(0, REPO)
import torch

torch.hub.list = lambda *a, **k: []
torch.Tensor.cuda = lambda self, *a, **k: self
torch.nn.Module.cuda = lambda self, *a, **k: self
torch.cuda.synchronize = lambda *a, **k: None
import main_dino as M
import utils
from torchvision import models as tvm
from vision_transformer import DINOHead

utils.SmoothedValue.synchronize_between_processes = lambda self: None
args = M.get_args_parser().parse_args(
    [
        "--arch",
        ARCH,
        "--out_dim",
        "128",
        "--use_fp16",
        "false",
        "--batch_size_per_gpu",
        "4",
        "--local_crops_number",
        "2",
    ]
)
args.rank, args.world_size, args.gpu = 0, 1, 0
torch.distributed.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
torch.manual_seed(0)
if ARCH == "vit_tiny":  # main_dino.py's ViT branch
    import vision_transformer as vits

    student = vits.__dict__[ARCH](patch_size=args.patch_size, drop_path_rate=args.drop_path_rate)
    teacher = vits.__dict__[ARCH](patch_size=args.patch_size)
    embed_dim = student.embed_dim
else:
    student, teacher = tvm.resnet18(), tvm.resnet18()
    embed_dim = student.fc.weight.shape[1]
student = utils.MultiCropWrapper(
    student,
    DINOHead(
        embed_dim,
        args.out_dim,
        use_bn=args.use_bn_in_head,
        norm_last_layer=args.norm_last_layer,
        hidden_dim=64,
        bottleneck_dim=32,
    ),
)
teacher = utils.MultiCropWrapper(
    teacher, DINOHead(embed_dim, args.out_dim, args.use_bn_in_head, hidden_dim=64, bottleneck_dim=32)
)
if utils.has_batchnorms(student):
    teacher = torch.nn.parallel.DistributedDataParallel(teacher)
    teacher_without_ddp = teacher.module
else:
    teacher_without_ddp = teacher
student = torch.nn.parallel.DistributedDataParallel(student)
teacher_without_ddp.load_state_dict(student.module.state_dict())
for p in teacher.parameters():
    p.requires_grad = False
dino_loss = M.DINOLoss(
    args.out_dim,
    args.local_crops_number + 2,
    args.warmup_teacher_temp,
    args.teacher_temp,
    args.warmup_teacher_temp_epochs,
    args.epochs,
)
optimizer = torch.optim.AdamW(utils.get_params_groups(student))
loader = [
    ([torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32), torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)], None)
    for _ in range(2)
]
lr_schedule = utils.cosine_scheduler(
    args.lr * args.batch_size_per_gpu / 256.0, args.min_lr, args.epochs, len(loader), warmup_epochs=args.warmup_epochs
)
wd_schedule = utils.cosine_scheduler(args.weight_decay, args.weight_decay_end, args.epochs, len(loader))
momentum_schedule = utils.cosine_scheduler(args.momentum_teacher, 1, args.epochs, len(loader))
M.train_one_epoch(
    student,
    teacher,
    teacher_without_ddp,
    dino_loss,
    loader,
    optimizer,
    lr_schedule,
    wd_schedule,
    momentum_schedule,
    0,
    None,
    args,
)
save_dict = {
    "student": student.state_dict(),
    "teacher": teacher.state_dict(),
    "optimizer": optimizer.state_dict(),
    "epoch": 100,
    "args": args,
    "dino_loss": dino_loss.state_dict(),
}
save_dict["fp16_scaler"] = {
    "scale": 65536.0,
    "growth_factor": 2.0,
    "backoff_factor": 0.5,
    "growth_interval": 2000,
    "_growth_tracker": 2,
}
out.mkdir(parents=True, exist_ok=True)
torch.save(save_dict, out / ("checkpoint.pth" if ARCH == "resnet18" else "checkpoint_vit.pth"))
print("official dino saved")
