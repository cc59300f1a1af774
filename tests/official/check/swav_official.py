"""Write SwAV's checkpoint.pth.tar / swav_800ep_pretrain.pth.tar with facebookresearch/swav's own code, on CPU.

Usage: swav_official.py REPO APEX_LARC_PY OUT. A stub ``apex`` package is made in a temp folder
holding apex's real ``parallel/LARC.py`` (pure Python) and an ``amp`` whose ``state_dict`` is a
stand-in (apex amp needs CUDA); ``pandas`` (src/logger.py's stats table) is an empty stub.
main_swav.py's ``train()``, ``distributed_sinkhorn`` and its ``save_dict`` are used, with
``Tensor.cuda`` a no-op; the net is ``src.resnet50.ResNet(BasicBlock, [2, 2, 2, 2], ...)``.
"""

import shutil
import sys
import tempfile
from pathlib import Path

REPO, LARC_PY, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
stubs = Path(tempfile.mkdtemp())
(stubs / "apex" / "parallel").mkdir(parents=True)
(stubs / "pandas").mkdir()
(stubs / "pandas" / "__init__.py").write_text("")
(stubs / "apex" / "parallel" / "__init__.py").write_text("")
shutil.copy(LARC_PY, stubs / "apex" / "parallel" / "LARC.py")
(stubs / "apex" / "__init__.py").write_text(
    "from collections import OrderedDict\nfrom . import parallel\n"
    "class _Amp:\n    def state_dict(self):\n"
    "        return OrderedDict(loss_scaler0={'loss_scale': 65536.0, 'unskipped': 2})\n"
    "amp = _Amp()\n"
)
sys.path.insert(0, str(stubs))
sys.path.insert(0, REPO)
sys.argv = ["main_swav.py"]
import numpy as np
import torch

torch.Tensor.cuda = lambda self, *a, **k: self
import main_swav as M
import src.resnet50 as resnet_models
from apex.parallel.LARC import LARC

M.args = args = M.parser.parse_args(
    [
        "--nmb_crops",
        "2",
        "2",
        "--size_crops",
        "32",
        "16",
        "--freeze_prototypes_niters",
        "1",
        "--use_fp16",
        "false",
        "--hidden_mlp",
        "64",
        "--feat_dim",
        "32",
        "--nmb_prototypes",
        "40",
    ]
)
args.world_size, args.rank = 1, 0
torch.distributed.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
model = resnet_models.ResNet(
    resnet_models.BasicBlock,
    [2, 2, 2, 2],
    normalize=True,
    hidden_mlp=args.hidden_mlp,
    output_dim=args.feat_dim,
    nmb_prototypes=args.nmb_prototypes,
)
optimizer = torch.optim.SGD(model.parameters(), lr=args.base_lr, momentum=0.9, weight_decay=args.wd)
optimizer = LARC(optimizer=optimizer, trust_coefficient=0.001, clip=False)
loader = [
    [torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32), torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)]
    for _ in range(2)
]
lr_schedule = np.linspace(args.start_warmup, args.base_lr, len(loader) * args.warmup_epochs)
model = torch.nn.parallel.DistributedDataParallel(model)
scores, queue = M.train(loader, model, optimizer, 0, lr_schedule, None)
save_dict = {"epoch": 800, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict()}
import apex

save_dict["amp"] = apex.amp.state_dict()
out.mkdir(parents=True, exist_ok=True)
torch.save(save_dict, out / "checkpoint.pth.tar")
torch.save(model.state_dict(), out / "swav_800ep_pretrain.pth.tar")
print("official swav saved", scores)
