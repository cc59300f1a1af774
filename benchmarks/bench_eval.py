"""Evaluation speed on CPU: feature extraction (fp32 / bf16 autocast), kNN, linear probe.

    python benchmarks/bench_eval.py [--n-extract 1024] [--out benchmarks/results/eval_cpu.md]

* Extraction: a CIFAR-style ResNet-18 (random init; ``e2mc.models.build_backbone("resnet18",
  cifar_stem=True)``, else torchvision resnet18 with a 3x3 stem) over the first N CIFAR-10 test
  images from /work/shared/data/cifar10 (decoded by ``e2mc.data.build_dataset`` when available,
  else torchvision.io), eval transform included, no cache.
* kNN and linear probe: full CIFAR-10 size (50,000 train x 10,000 test x 512-d) on synthetic
  class-structured features, since extracting 60,000 images on 2 shared cores takes too long.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

CIFAR = "/work/shared/data/cifar10"


def _backbone():
    try:
        from e2mc.models.backbones import build_backbone

        return build_backbone("resnet18", cifar_stem=True), "e2mc build_backbone('resnet18', cifar_stem=True)"
    except ImportError:
        import torchvision

        net = torchvision.models.resnet18()
        net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = torch.nn.Identity()
        net.fc = torch.nn.Identity()
        return net, "torchvision resnet18, 3x3 stem"


def _cifar_subset(n: int):
    try:
        from e2mc.data.datasets import build_dataset

        return build_dataset(CIFAR, "test", limit=n), "e2mc build_dataset (folder)"
    except ImportError:
        import glob

        from torchvision.io import decode_image

        classes = sorted(os.listdir(os.path.join(CIFAR, "test")))
        files = [(f, c) for c, name in enumerate(classes) for f in sorted(glob.glob(f"{CIFAR}/test/{name}/*"))]
        files = files[:: max(1, len(files) // n)][:n]
        x = torch.stack([decode_image(f) for f, _ in files])
        return torch.utils.data.TensorDataset(x, torch.tensor([c for _, c in files])), "torchvision.io"


class _Wrap(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.backbone = net

    def embed(self, x):
        return self.backbone(x)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-extract", type=int, default=1024)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from e2mc.evaluation.features import extract_features
    from e2mc.evaluation.knn import knn_classify
    from e2mc.evaluation.linear import linear_probe

    rows = []
    if os.path.isdir(CIFAR):
        t0 = time.perf_counter()
        ds, how = _cifar_subset(args.n_extract)
        decode_s = time.perf_counter() - t0
        net, arch = _backbone()
        model = _Wrap(net)
        for name, amp in (("fp32", "fp32"), ("bf16 autocast", "bf16")):
            extract_features(
                model, torch.utils.data.Subset(ds, range(64)), batch_size=64, amp_dtype=amp, use_cache=False
            )  # warm-up
            t0 = time.perf_counter()
            fs = extract_features(model, ds, batch_size=256, amp_dtype=amp, use_cache=False)
            dt = time.perf_counter() - t0
            rows.append(
                (
                    f"extract {name}",
                    f"N={len(ds)} CIFAR-10 test images 32x32, {arch}, batch 256",
                    f"{dt:.1f} s",
                    f"{len(ds) / dt:.0f} img/s",
                )
            )
        rows.append(("decode", f"N={len(ds)} JPEGs via {how}", f"{decode_s:.1f} s", ""))
        assert fs["backbone"].shape == (len(ds), 512)
    else:
        rows.append(("extract", f"skipped: {CIFAR} absent", "", ""))

    torch.manual_seed(0)
    centres = torch.randn(10, 512)
    ytr, yte = torch.randint(0, 10, (50000,)), torch.randint(0, 10, (10000,))
    xtr = 0.15 * centres[ytr] + torch.randn(50000, 512)
    xte = 0.15 * centres[yte] + torch.randn(10000, 512)
    t0 = time.perf_counter()
    acc = knn_classify(xtr, ytr, xte, yte, ks=(10, 20, 100, 200))
    dt = time.perf_counter() - t0
    rows.append(
        (
            "kNN",
            "50,000 train x 10,000 queries x 512-d synthetic, k=10,20,100,200 in one pass",
            f"{dt:.1f} s",
            f"top1@20 {acc[20]:.3f}",
        )
    )
    t0 = time.perf_counter()
    res = linear_probe(xtr, ytr, xte, yte)
    dt = time.perf_counter() - t0
    rows.append(
        (
            "linear probe",
            f"same features; {len(res['val_top1_per_weight_decay'])} weight decays in one L-BFGS pass on 90% + refit on 100%",
            f"{dt:.1f} s",
            f"top1 {res['top1']:.3f} (wd {res['weight_decay']:g}); L-BFGS iterations "
            f"{res.get('iterations', 'n/a')} + refit {res.get('refit', {}).get('iterations', 'n/a')}, "
            f"converged {res.get('converged', 'n/a')}",
        )
    )

    cpu = platform.processor() or platform.machine()
    lines = [
        "# Evaluation speed (CPU)",
        "",
        f"Machine: {cpu}, {os.cpu_count()} cores (shared with other jobs), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}; load average at the end "
        f"{os.getloadavg()[0]:.1f} (other jobs were running, so times are upper bounds).",
        "",
        f"Command: `python benchmarks/bench_eval.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        "| step | what was timed | time | result |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
