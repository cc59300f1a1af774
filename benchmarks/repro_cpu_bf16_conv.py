"""PyTorch's CPU half-precision hazard that e2mc refuses (``e2mc.train.cpuconv``): the weight gradient
of a strided convolution fed a 1-pixel-wide input is not reproducible under CPU autocast to bfloat16.

    OMP_NUM_THREADS=1 python benchmarks/repro_cpu_bf16_conv.py [--reps 12]

Pure PyTorch, no e2mc code: a ``Conv2d(256, 512, 3, stride=2, padding=1)`` (ResNet-18's
``layer4.0.conv1``) on a batch of 512 random inputs of H x W pixels (square, and 4 x 1 / 1 x 4), backward with a fixed random
output gradient, ``reps`` times with the same inputs (the allocator's memory dirtied in between);
counts the repeats whose weight gradient differs from the first and the largest difference. Writes
``benchmarks/results/cpu_bf16_conv.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch


def trial(hw: tuple[int, int], channels_last: bool, stride: int, dtype, reps: int) -> tuple[int, float]:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(256, 512, 3, stride=stride, padding=1, bias=False)
    x0 = torch.randn(512, 256, *hw)
    if channels_last:
        conv, x0 = conv.to(memory_format=torch.channels_last), x0.contiguous(memory_format=torch.channels_last)
    amp = dict(device_type="cpu", dtype=dtype or torch.float32, enabled=dtype is not None)
    with torch.autocast(**amp):
        out = conv(x0).shape
    gy = torch.randn(out).to(dtype or torch.float32)
    ref, differ, worst = None, 0, 0.0
    for rep in range(reps):
        junk = torch.full((8 * 1024 * 1024,), float("nan") if rep % 2 else 3e38)
        del junk
        conv.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_(True)
        with torch.autocast(**amp):
            y = conv(x)
        y.backward(gy)
        g = conv.weight.grad.double()
        if ref is None:
            ref = g.clone()
        elif not torch.equal(g, ref):
            differ += 1
            worst = max(worst, float((g - ref).abs().nan_to_num(float("inf")).max()))
    return differ, worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=12)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_bf16_conv.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    sizes = ((1, 1), (2, 2), (4, 4), (4, 1), (1, 4))
    cases = [(hw, cl, 2, torch.bfloat16) for cl in (True, False) for hw in sizes]
    cases += [((1, 1), True, 1, torch.bfloat16), ((1, 1), True, 2, None)]
    for hw, cl, stride, dtype in cases:
        differ, worst = trial(hw, cl, stride, dtype, args.reps)
        rows.append(
            f"| {hw[0]} x {hw[1]} | {'channels_last' if cl else 'contiguous'} | {stride} | {'bf16' if dtype else 'fp32'} "
            f"| {differ} of {args.reps - 1} | {worst:.3g} |"
        )
        print(rows[-1], flush=True)
    lines = [
        "# CPU bf16: weight gradient of a strided convolution on a 1-pixel-wide input",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}; machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, 1 thread; command: `python benchmarks/repro_cpu_bf16_conv.py --reps {args.reps}`",
        "- Conv2d(256, 512, 3, padding=1), batch 512, the same input and output gradient every repeat",
        "",
        "| input | layout | stride | precision | repeats whose weight gradient differs from the first | largest difference |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
