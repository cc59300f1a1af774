"""Write MoCo v3's checkpoint_0099.pth.tar with facebookresearch/moco-v3's own code, on CPU.

Usage: mocov3_official.py REPO OUT. moco.builder.MoCo_ResNet over torchvision resnet18 (dim 16,
mlp_dim 64, T 1.0) as main_worker builds it, moco.optimizer.LARS over model.parameters(), a
GradScaler, main_moco.py's train() (2 batches, --moco-m-cos) and save_checkpoint; DDP over gloo,
world size 1. CPU only: Tensor.cuda returns the tensor, torch.cuda.amp.GradScaler is a CPU
GradScaler (enabled, as on a GPU), and timm.models.layers.helpers (vits.py's timm 0.4.9 import) is
provided from timm.layers.
"""

import sys
import tempfile
import types
from functools import partial
from pathlib import Path

REPO, out = sys.argv[1], Path(sys.argv[2])
sys.path.insert(0, REPO)
import timm.layers  # noqa: E402
import torch  # noqa: E402

sys.modules["timm.models.layers.helpers"] = types.SimpleNamespace(to_2tuple=timm.layers.to_2tuple)
torch.Tensor.cuda = lambda self, *a, **k: self
torch.cuda.amp.GradScaler = lambda *a, **k: torch.amp.GradScaler("cpu")
sys.argv = ["main_moco.py", "/nonexistent"]
import main_moco as M  # noqa: E402
import moco.builder  # noqa: E402
import moco.optimizer  # noqa: E402
import torchvision.models as models  # noqa: E402

args = M.parser.parse_args(
    ["/nonexistent", "-a", "resnet18", "--moco-dim", "16", "--moco-mlp-dim", "64", "-b", "8", "--moco-m-cos",
     "--epochs", "100", "--print-freq", "1000"]
)  # fmt: skip
args.gpu, args.rank = None, -1
torch.distributed.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
model = moco.builder.MoCo_ResNet(
    partial(models.__dict__[args.arch], zero_init_residual=True), args.moco_dim, args.moco_mlp_dim, args.moco_t
)
args.lr = args.lr * args.batch_size / 256
model = torch.nn.parallel.DistributedDataParallel(model)
optimizer = moco.optimizer.LARS(model.parameters(), args.lr, weight_decay=args.weight_decay, momentum=args.momentum)
scaler = torch.cuda.amp.GradScaler()
loader = [([torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)], torch.zeros(4)) for _ in range(2)]
epoch = 99
M.train(loader, model, optimizer, scaler, None, epoch, args)
out.mkdir(parents=True, exist_ok=True)
M.save_checkpoint(
    {
        "epoch": epoch + 1,
        "arch": args.arch,
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
    },
    is_best=False,
    filename=str(out / "checkpoint_{:04d}.pth.tar".format(epoch)),
)
print("official mocov3 saved")
