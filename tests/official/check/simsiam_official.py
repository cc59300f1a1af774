"""Write SimSiam's checkpoint_0099.pth.tar with facebookresearch/simsiam's own code, on CPU.

Usage: simsiam_official.py REPO OUT. simsiam.builder.SimSiam over torchvision resnet18 (dim 64,
pred_dim 16), main_simsiam.py's optim_params with --fix-pred-lr, its adjust_learning_rate,
train() (2 batches) and save_checkpoint; DDP over gloo, world size 1.
"""

import sys
import tempfile
from pathlib import Path

REPO, out = sys.argv[1], Path(sys.argv[2])
sys.path.insert(0, REPO)
sys.argv = ["main_simsiam.py", "/nonexistent"]
import main_simsiam as M
import simsiam.builder
import torch
import torchvision.models as models

args = M.parser.parse_args(
    [
        "/nonexistent",
        "-a",
        "resnet18",
        "--dim",
        "64",
        "--pred-dim",
        "16",
        "--fix-pred-lr",
        "-b",
        "8",
        "--epochs",
        "100",
        "--print-freq",
        "1000",
    ]
)
args.gpu = None
torch.distributed.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
model = simsiam.builder.SimSiam(models.__dict__[args.arch], args.dim, args.pred_dim)
init_lr = args.lr * args.batch_size / 256
model = torch.nn.parallel.DistributedDataParallel(model)
criterion = torch.nn.CosineSimilarity(dim=1)
optim_params = [
    {"params": model.module.encoder.parameters(), "fix_lr": False},
    {"params": model.module.predictor.parameters(), "fix_lr": True},
]
optimizer = torch.optim.SGD(optim_params, init_lr, momentum=args.momentum, weight_decay=args.weight_decay)
epoch = 99
M.adjust_learning_rate(optimizer, init_lr, epoch, args)
loader = [([torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)], torch.zeros(4)) for _ in range(2)]
M.train(loader, model, criterion, optimizer, epoch, args)
out.mkdir(parents=True, exist_ok=True)
M.save_checkpoint(
    {"epoch": epoch + 1, "arch": args.arch, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict()},
    is_best=False,
    filename=str(out / "checkpoint_{:04d}.pth.tar".format(epoch)),
)
print("official simsiam saved")
