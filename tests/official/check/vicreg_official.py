"""Write VICReg's model.pth / resnet50.pth with facebookresearch/vicreg's own code, on CPU.

Usage: vicreg_official.py REPO {main,module} OUT. ``main``: main_vicreg.py exec'd as ``__main__``
(its ``if __name__`` block cut); ``module``: imported as ``main_vicreg``. The official VICReg,
LARS, exclude_bias_and_norm, adjust_learning_rate and forward are used; resnet18 is registered as
``resnet.ResNet(BasicBlock, [2, 2, 2, 2])``; DDP over gloo, world size 1; no SyncBatchNorm (CPU).
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO, mode, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
sys.path.insert(0, REPO)
if mode == "module":
    import main_vicreg as M
else:
    src = open(os.path.join(REPO, "main_vicreg.py")).read().split('if __name__ == "__main__":')[0]
    exec(compile(src, "main_vicreg.py", "exec"), globals())
    M = sys.modules["__main__"]
import resnet
import torch

resnet.resnet18 = lambda **kw: (resnet.ResNet(resnet.BasicBlock, [2, 2, 2, 2], **kw), 512)
args = argparse.Namespace(
    arch="resnet18",
    mlp="64-64-64",
    batch_size=8,
    sim_coeff=25.0,
    std_coeff=25.0,
    cov_coeff=1.0,
    epochs=100,
    base_lr=0.2,
    wd=1e-6,
)
torch.distributed.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
model = M.VICReg(args)
model = torch.nn.parallel.DistributedDataParallel(model)
optimizer = M.LARS(
    model.parameters(),
    lr=0,
    weight_decay=args.wd,
    weight_decay_filter=M.exclude_bias_and_norm,
    lars_adaptation_filter=M.exclude_bias_and_norm,
)
loader = [None] * 10
for step in range(2):
    M.adjust_learning_rate(args, optimizer, loader, step + 1)
    x, y = torch.rand(8, 3, 32, 32), torch.rand(8, 3, 32, 32)
    optimizer.zero_grad()
    loss = model.forward(x, y)
    loss.backward()
    optimizer.step()
out.mkdir(parents=True, exist_ok=True)
state = dict(epoch=100, model=model.state_dict(), optimizer=optimizer.state_dict())
torch.save(state, out / "model.pth")
torch.save(model.module.backbone.state_dict(), out / "resnet50.pth")
print("official", mode, "saved", M.exclude_bias_and_norm.__module__)
