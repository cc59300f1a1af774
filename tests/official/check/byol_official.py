"""Write a BYOL .ckpt with vturrisi/solo-learn's own main_pretrain.py, on CPU.

Usage: byol_official.py REPO OUT (run with a Python that has lightning 2.1.2, omegaconf, hydra-core
and solo-learn's other imports; not e2mc's environment). A folder of 8 random 32 px PNGs in two
classes is the "custom" dataset; scripts/pretrain/cifar/byol.yaml (LARS, warmup_cosine per step,
momentum 0.99 -> 1, the asymmetric augmentations) runs one epoch of 2 batches of 4 on torchvision's
resnet18 with heads 32/16/24, and solo's Checkpointer writes OUT/trained_models/byol/0/*.ckpt.
"""

import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

REPO, out = Path(sys.argv[1]), Path(sys.argv[2]).resolve()
g = torch.Generator().manual_seed(0)
for c in ("a", "b"):
    (out / "images" / c).mkdir(parents=True, exist_ok=True)
    for i in range(4):
        arr = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(arr).save(out / "images" / c / f"{i}.png")
overrides = [
    "++data.dataset=custom",
    f"++data.train_path={out / 'images'}",
    "++data.val_path=null",
    "++data.num_workers=0",
    "++optimizer.batch_size=4",
    "++max_epochs=1",
    '++devices="1"',  # len() of it is solo's device count; Lightning takes "1" on CPU
    "++accelerator=cpu",
    "++strategy=auto",
    "++precision=32",
    "++sync_batchnorm=False",
    "++wandb.enabled=False",
    "++auto_resume.enabled=False",
    f"++checkpoint.dir={out / 'trained_models'}",
    "++method_kwargs.proj_hidden_dim=32",
    "++method_kwargs.proj_output_dim=16",
    "++method_kwargs.pred_hidden_dim=24",
    "++augmentations.0.crop_size=32",
    "++augmentations.1.crop_size=32",
]
cmd = [sys.executable, str(REPO / "main_pretrain.py"), "--config-path", str(REPO / "scripts/pretrain/cifar")]
subprocess.run([*cmd, "--config-name", "byol.yaml", *overrides], check=True, cwd=out)
print("official byol saved:", *sorted(out.glob("trained_models/byol/*/*.ckpt")))
