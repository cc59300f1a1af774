"""Forward+backward time of every criterion at a few (N, D), as ratios to the VICReg loss.

Usage: python benchmarks/bench_criteria.py [--repeats 5] [--threads N] [--out benchmarks/results/criteria_cpu.md]
Two views of (N, D) leaf embeddings; SwAV scores come from L2-normalised embeddings and a
(K=3000, D) prototype matrix (the matmul is timed too). Median of ``repeats`` after a warm-up.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from e2mc.criteria import (
    E2MC,
    MMCRAddon,
    SimSiamLoss,
    SwAVLoss,
    UniformityAddon,
    VCAddon,
    VICRegLoss,
)
from e2mc.criteria.vicreg import variance_hinge

SHAPES = [(512, 8192), (512, 2048), (256, 128)]


def vicreg_official_dxd(views):
    """VICReg as in the official code (D x D covariance with an off-diagonal mask), for context."""
    z1, z2 = views
    n, d = z1.shape
    inv = F.mse_loss(z1, z2)
    var = (variance_hinge(z1) + variance_hinge(z2)) / 2
    cov = 0.0
    for z in (z1, z2):
        zc = z - z.mean(0)
        c = zc.t() @ zc / (n - 1)
        off = c.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()
        cov = cov + off.pow(2).sum() / d
    return {"loss": 25 * inv + 25 * var + cov}


def make_cases(n, d, gen):
    z = [torch.randn(n, d, generator=gen) for _ in range(2)]
    protos = F.normalize(torch.randn(3000, d, generator=gen), dim=1)
    swav = SwAVLoss()

    def swav_call(views):
        return swav([F.normalize(v, dim=1) @ protos.t() for v in views])

    simsiam = SimSiamLoss()
    cases = {
        "VICReg": VICRegLoss(),
        "VICReg (official DxD cov)": vicreg_official_dxd,
        "E2MC (sigmoid)": E2MC(transform="sigmoid"),
        "E2MC (gaussian_cdf)": E2MC(transform="gaussian_cdf"),
        "SwAV (K=3000)": swav_call,
        "SimSiam": lambda views: simsiam(views, [v * 1.0 for v in views]),
        "VC add-on": VCAddon(),
        "Uniformity add-on": UniformityAddon(),
        "MMCR add-on": MMCRAddon(),
    }
    return z, cases


def time_cases(cases, z, repeats):
    """Median forward+backward seconds per case; cases run round-robin so that load from
    other processes on a shared machine hits all of them alike."""

    def once(fn):
        views = [v.clone().requires_grad_() for v in z]
        t = time.perf_counter()
        fn(views)["loss"].backward()
        return time.perf_counter() - t

    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        once(fn)  # warm-up
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(once(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}; {os.cpu_count()} logical cores, torch.set_num_threads({torch.get_num_threads()}); "
        f"torch {torch.__version__}; Python {platform.python_version()}"
    )


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads (1 gives stable timings on a shared machine)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = load_average()
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    table: dict[str, dict] = {}
    for n, d in SHAPES:
        z, cases = make_cases(n, d, gen)
        for name, sec in time_cases(cases, z, args.repeats).items():
            table.setdefault(name, {})[(n, d)] = sec
            print(f"{name:28s} N={n:4d} D={d:5d} {table[name][(n, d)] * 1e3:9.1f} ms", file=sys.stderr)
    cols = [f"N={n}, D={d}" for n, d in SHAPES]
    lines = [
        "# Criteria speed on CPU (forward + backward, two views)",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"Date: {datetime.date.today().isoformat()}  ",
        f"Machine: {machine()}  ",
        f"Load average (1, 5, 15 min) before: {load_before}; after: {load_average()}; "
        f"wall {time.perf_counter() - start:.0f} s",
        "",
        f"Median of {args.repeats} round-robin repeats after one warm-up. Each cell: time in ms and, in "
        "brackets, the ratio to `VICRegLoss` at the same (N, D).",
        "",
        "| criterion | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name, row in table.items():
        cells = [f"{row[s] * 1e3:.1f} ms ({row[s] / table['VICReg'][s]:.2f}x)" for s in SHAPES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
