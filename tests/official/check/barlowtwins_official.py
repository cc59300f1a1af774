"""Write Barlow Twins' checkpoint.pth / resnet50.pth with facebookresearch/barlowtwins's own code, on CPU.

Usage: barlowtwins_official.py REPO OUT (REPO: a checkout of the official repository, e.g. ``git
archive`` of commit 8e8d284 into /tmp). main.py is imported (its ``__main__`` block does not run);
its ``BarlowTwins``, ``LARS``, ``adjust_learning_rate`` and ``forward`` (the loss, with its
``all_reduce``) are used. ``torchvision.models.resnet50`` is pointed at ``resnet18`` and the
projector's first Linear, written for ResNet-50's 2048 features, is replaced by the same
``Linear(512, 64, bias=False)`` at the same index; DDP over gloo, world size 1; no SyncBatchNorm
(CPU; the conversion changes no state-dict key). The param groups and the saves are main.py's lines.
"""

import argparse
import sys
import tempfile
from pathlib import Path

REPO, out = sys.argv[1], Path(sys.argv[2])
sys.path.insert(0, REPO)
import main as M  # noqa: E402  (the official main.py)
import torch  # noqa: E402
import torchvision  # noqa: E402

torchvision.models.resnet50 = torchvision.models.resnet18
args = argparse.Namespace(
    projector="64-64-64",
    batch_size=8,
    lambd=0.0051,
    epochs=100,
    learning_rate_weights=0.2,
    learning_rate_biases=0.0048,
    weight_decay=1e-6,
)
torch.distributed.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
model = M.BarlowTwins(args)
model.projector[0] = torch.nn.Linear(512, 64, bias=False)
# main.py's lines: the two groups, DDP, LARS
param_weights = []
param_biases = []
for param in model.parameters():
    if param.ndim == 1:
        param_biases.append(param)
    else:
        param_weights.append(param)
parameters = [{"params": param_weights}, {"params": param_biases}]
model = torch.nn.parallel.DistributedDataParallel(model)
optimizer = M.LARS(
    parameters, lr=0, weight_decay=args.weight_decay, weight_decay_filter=True, lars_adaptation_filter=True
)
loader = [None] * 10
for step in range(1, 3):
    M.adjust_learning_rate(args, optimizer, loader, step)
    y1, y2 = torch.rand(8, 3, 32, 32), torch.rand(8, 3, 32, 32)
    optimizer.zero_grad()
    loss = model.forward(y1, y2)
    loss.backward()
    optimizer.step()
out.mkdir(parents=True, exist_ok=True)
state = dict(epoch=100, model=model.state_dict(), optimizer=optimizer.state_dict())
torch.save(state, out / "checkpoint.pth")
torch.save(model.module.backbone.state_dict(), out / "resnet50.pth")
print("official saved", float(loss))
