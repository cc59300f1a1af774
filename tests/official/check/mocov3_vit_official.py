"""Write MoCo v3's ViT checkpoint with facebookresearch/moco-v3's own code, on CPU, and check that
e2mc's timm ViT computes what the official ViT does.

Usage: mocov3_vit_official.py REPO OUT [--full]. moco.builder.MoCo_ViT over vits.py's own
VisionTransformerMoCo (tiny: 32 px, patch 8, width 32, depth 2, 4 heads; stop_grad_conv1), dim 16,
mlp_dim 64, T 0.2, torch.optim.AdamW(model.parameters(), lr, weight_decay=.1), a GradScaler,
main_moco.py's train() (2 batches, --moco-m-cos) and save_checkpoint; DDP over gloo, world size 1.
Also prints whether gen_mocov3_vit.sincos equals vits.py's position embedding. With --full: the
same for vits.vit_small (12 heads), then the saved file is loaded by e2mc (PYTHONPATH=src) as
timm:vit_small_patch16_224:num_heads=12 and the eval-mode outputs of base encoder, predictor and
momentum encoder are compared. CPU only: Tensor.cuda returns the tensor, torch.cuda.amp.GradScaler
is a CPU GradScaler, timm.models.layers.helpers is provided from timm.layers and
VisionTransformer.num_tokens = 1 (timm 0.4.9's attribute, which vits.py asserts).
"""

import sys
import tempfile
import types
from functools import partial
from pathlib import Path

REPO, out, full = sys.argv[1], Path(sys.argv[2]), "--full" in sys.argv
sys.path.insert(0, REPO)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import timm.layers  # noqa: E402
import torch  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

sys.modules["timm.models.layers.helpers"] = types.SimpleNamespace(to_2tuple=timm.layers.to_2tuple)
VisionTransformer.num_tokens = 1
torch.Tensor.cuda = lambda self, *a, **k: self
torch.cuda.amp.GradScaler = lambda *a, **k: torch.amp.GradScaler("cpu")
sys.argv = ["main_moco.py", "/nonexistent"]
import main_moco as M  # noqa: E402
import moco.builder  # noqa: E402
import vits  # noqa: E402
from torch import nn  # noqa: E402

arch = "vit_small"
args = M.parser.parse_args(
    ["/nonexistent", "-a", arch, "--moco-dim", "16", "--moco-mlp-dim", "64", "-b", "8", "--moco-m-cos",
     "--optimizer=adamw", "--lr=1.5e-4", "--weight-decay=.1", "--epochs=300", "--warmup-epochs=40",
     "--stop-grad-conv1", "--moco-t=.2", "--print-freq", "1000"]
)  # fmt: skip
args.gpu, args.rank = None, -1
torch.distributed.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
if full:
    size, encoder = 224, partial(vits.__dict__[arch], stop_grad_conv1=args.stop_grad_conv1)
else:
    size = 32
    encoder = partial(
        vits.VisionTransformerMoCo, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=4,
        qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), stop_grad_conv1=args.stop_grad_conv1,
    )  # fmt: skip
model = moco.builder.MoCo_ViT(encoder, args.moco_dim, args.moco_mlp_dim, args.moco_t)
args.lr = args.lr * args.batch_size / 256
model = torch.nn.parallel.DistributedDataParallel(model)
optimizer = torch.optim.AdamW(model.parameters(), args.lr, weight_decay=args.weight_decay)
scaler = torch.cuda.amp.GradScaler()
loader = [([torch.rand(4, 3, size, size), torch.rand(4, 3, size, size)], torch.zeros(4)) for _ in range(2)]
epoch = 299
M.train(loader, model, optimizer, scaler, None, epoch, args)
out.mkdir(parents=True, exist_ok=True)
path = out / "checkpoint_{:04d}.pth.tar".format(epoch)
M.save_checkpoint(
    {
        "epoch": epoch + 1,
        "arch": args.arch,
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
    },
    is_best=False,
    filename=str(path),
)
print("official mocov3 ViT saved:", path)
if not full:
    from gen_mocov3_vit import sincos

    same = torch.equal(sincos(4, 32), model.module.base_encoder.pos_embed.detach())
    print("gen_mocov3_vit.sincos equals vits.py's pos_embed:", same)
else:
    from e2mc.models.checkpoints import load_model

    ours, report = load_model(str(path))
    print("e2mc:", report.format, report.method, report.arch, report.heads, report.head_sizes)
    net = model.module
    net.eval()
    ours.eval()
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        z, f = net.base_encoder(x), ours.backbone(x)
        pairs = {
            "base_encoder": (z, ours.projector(f)),
            "predictor": (net.predictor(z), ours.predictor(ours.projector(f))),
            "momentum_encoder": (net.momentum_encoder(x), ours.momentum_encoder.projector(ours.momentum_encoder.backbone(x))),
        }  # fmt: skip
    for name, (a, b) in pairs.items():
        print(f"{name}: max abs difference {float((a - b).abs().max()):.3g}")
