"""Loader throughput per worker on real-size JPEGs: decode + what the worker does per image.

    python benchmarks/bench_loader.py [--images 48] [--rounds 3] [--threads 1] [--out FILE]

Makes ``--images`` 500x375 JPEGs (quality 90, smooth content plus noise, about the size of an
ImageNet JPEG) in a temp folder, then times ``StreamingImageFolder.__getitem__`` in this one
process (= one DataLoader worker), interleaved over ``--rounds`` rounds:

- ``centre-256`` (the training path before issue 13): decode, resize the shorter side to 256,
  keep the centre 256 square (the random-resized crops then ran on the device);
- ``<recipe>-crops`` (now): decode, then the recipe's random-resized crop of each view from the
  full image (``views.LoaderCrops``: vicreg 2 x 224 bicubic, simsiam 2 x 224, swav 2 x 224 + 6 x 96).

Writes a Markdown table to ``--out`` (default benchmarks/results/loader_cpu.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from e2mc.fileio import atomic_write_text


def make_jpegs(folder: str, n: int, seed: int = 0) -> list[str]:
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        base = rng.integers(0, 256, (47, 63, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((500, 375), Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))
        arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (375, 500, 3))
        path = os.path.join(folder, "train", "c", f"{i:04d}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "loader_cpu.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from e2mc.data.folder import StreamingImageFolder
    from e2mc.data.views import LoaderCrops, view_config

    tmp = tempfile.mkdtemp(prefix="e2mc-bench-loader-")
    paths = make_jpegs(tmp, args.images)
    kb = np.mean([os.path.getsize(p) for p in paths]) / 1024
    base = StreamingImageFolder([(p, 0) for p in paths], ["c"], load_size=256)
    modes = {"centre-256": base}
    for recipe in ("vicreg", "simsiam", "swav"):
        modes[f"{recipe}-crops"] = base.with_transform(LoaderCrops(view_config(recipe, 256)))
    for ds in modes.values():  # warm-up
        ds[0]
    times = {m: 0.0 for m in modes}
    for r in range(args.rounds):
        order = list(modes) if r % 2 == 0 else list(reversed(modes))
        for m in order:
            t = time.perf_counter()
            for i in range(len(paths)):
                modes[m][i]
            times[m] += time.perf_counter() - t
    n = args.images * args.rounds
    rows = [(m, n / times[m], 1000 * times[m] / n) for m in modes]
    cmd = "python benchmarks/bench_loader.py " + " ".join(sys.argv[1:])
    lines = [
        "# Loader throughput per worker: decode + per-image work (StreamingImageFolder)",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}; machine: {platform.machine()}, 2-core shared CPU "
        f"(load average {os.getloadavg()[0]:.1f} at the end), torch {torch.__version__}, {args.threads} thread(s)",
        f"- command: `{cmd.strip()}`",
        f"- data: {args.images} synthetic 500x375 JPEGs (quality 90, mean {kb:.0f} KiB), {args.rounds} interleaved rounds",
        "- `centre-256`: the training path before issue 13 (resize 256 + centre crop; crops then cut on the device);"
        " `<recipe>-crops`: each view's random-resized crop of the full image, in the worker",
        "",
        "| worker path | images/s per worker | ms/image |",
        "|---|---|---|",
        *[f"| {m} | {ips:.1f} | {ms:.1f} |" for m, ips, ms in rows],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
