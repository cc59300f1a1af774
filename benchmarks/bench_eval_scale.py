"""Time and peak memory of extraction-free evaluation (kNN, linear probe) at growing N (issue 17).

Features are SYNTHETIC and class-structured (class means ``randn(C, D)`` plus Gaussian noise),
stored as a float16 memory-mapped ``.npy`` file, as the feature cache holds them. The features
of each N are written once by a separate process (``--make``) under ``--tmp-dir`` and deleted
after the last configuration using them. Each configuration then runs in a fresh subprocess that
maps them read-only; its peak memory is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (torch
allocations and the mapped feature pages it touched included; tracemalloc would miss them),
reported with the process's resident memory before the evaluation started, and its CPU time
(``time.process_time()``: far less sensitive than wall time to other jobs on a shared machine). The subprocesses'
stderr (INFO logging: the streaming probe's progress lines) passes through to this one's.

    PYTHONPATH=src python3 benchmarks/bench_eval_scale.py --out benchmarks/results/eval_scale.md

Options choose the sizes; ``--quick`` runs a tiny grid (a smoke test of the script).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from e2mc.fileio import atomic_write_text


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_features(path: str, n: int, d: int, c: int, seed: int, chunk: int = 16384):
    """Class-structured synthetic features as a float16 .npy memmap, written in row blocks; the
    labels go to ``path`` with ``.labels.npy``."""
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=torch.Generator().manual_seed(1234))
    labels = torch.randint(0, c, (n,), generator=g)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, d))
    for s in range(0, n, chunk):
        y = labels[s : s + chunk]
        mm[s : s + len(y)] = (centers[y] + 2.0 * torch.randn(len(y), d, generator=g)).half().numpy()
    mm.flush()
    del mm
    np.save(path[: -len(".npy")] + ".labels.npy", labels.numpy())


def load_features(path: str):
    import warnings

    import numpy as np
    import torch

    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # read-only on purpose
    return (
        torch.from_numpy(np.load(path, mmap_mode="r")),
        torch.from_numpy(np.load(path[: -len(".npy")] + ".labels.npy")),
    )


def one(args) -> dict:
    """Run one configuration in this process on the features under ``args.features_dir``."""
    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    xtr, ytr = load_features(os.path.join(args.features_dir, f"train_{args.n}.npy"))
    xte, yte = load_features(os.path.join(args.features_dir, f"test_{args.n_test}.npy"))
    rss0 = _rss_mb()
    t0, cpu0 = time.perf_counter(), time.process_time()
    if args.what == "knn":
        from e2mc.evaluation.knn import knn_classify

        res = knn_classify(xtr, ytr, xte, yte, ks=(20,), num_classes=args.c)
    elif args.what == "knn_old":  # the implementation before issue 17 (full query x bank blocks)
        sys.path.insert(0, args.old_src)
        from knn_old import knn_classify as old

        res = old(xtr.float(), ytr, xte.float(), yte, ks=(20,), num_classes=args.c)
    else:
        from e2mc.evaluation.linear import linear_probe

        wds = tuple(float(v) for v in args.wds.split(","))
        res = linear_probe(
            xtr,
            ytr,
            xte,
            yte,
            weight_decays=wds,
            solver="streaming",
            num_classes=args.c,
            streaming={"epochs": args.epochs, "min_steps": 0},
        )
        res = {"top1": res["top1"], "weight_decay": res["weight_decay"], "epochs": res["streaming"]["epochs"]}
    dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "what": args.what,
        "n": args.n,
        "n_test": args.n_test,
        "d": args.d,
        "c": args.c,
        "seconds": dt,
        "cpu_seconds": cpu,
        "rss_before_mb": rss0,
        "peak_mb": peak,
        "features_mb": (args.n + args.n_test) * args.d * 2 / 2**20,
        "result": res,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--make", default="", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--features-dir", default="", help=argparse.SUPPRESS)
    p.add_argument("--tmp-dir", default=None, help="where the synthetic features are written (default: $TMPDIR)")
    p.add_argument("--what", default="knn")
    p.add_argument("--n", type=int, default=50000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--d", type=int, default=2048)
    p.add_argument("--c", type=int, default=1000)
    p.add_argument("--wds", default="1e-4,1e-3")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--old-src", default="")
    p.add_argument("--knn-ns", default="50000,200000")
    p.add_argument("--linear-ns", default="20000,50000")
    p.add_argument("--old-knn-n", type=int, default=50000, help="also run the pre-issue-17 kNN at this N (0: no)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.make:
        make_features(args.make, args.n, args.d, args.c, args.seed)
        return 0
    if args.one:
        print(json.dumps(one(args)))
        return 0
    if args.quick:
        args.knn_ns, args.linear_ns, args.d, args.c, args.n_test, args.old_knn_n = (
            "2000,4000",
            "2000,4000",
            64,
            10,
            200,
            2000,
        )
    here = os.path.dirname(os.path.abspath(__file__))
    old_src = tempfile.mkdtemp(prefix="e2mc_oldknn_")
    with open(os.path.join(old_src, "knn_old.py"), "w") as f:  # kNN as it was before issue 17
        f.write(
            subprocess.run(
                ["git", "show", "7aed61f:src/e2mc/evaluate/knn.py"],
                cwd=here,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
    runs = [("knn", int(n)) for n in args.knn_ns.split(",") if n] + [
        ("linear", int(n)) for n in args.linear_ns.split(",") if n
    ]
    if args.old_knn_n:
        runs.insert(1, ("knn_old", args.old_knn_n))
    rows = []
    feat_dir = tempfile.mkdtemp(prefix="e2mc_scale_", dir=args.tmp_dir)
    common = ["--d", str(args.d), "--c", str(args.c)]
    try:
        for i, (what, n) in enumerate(runs):
            for nn, name, seed in ((n, f"train_{n}.npy", 0), (args.n_test, f"test_{args.n_test}.npy", 1)):
                path = os.path.join(feat_dir, name)
                if not os.path.exists(path):
                    t0 = time.perf_counter()
                    subprocess.run(
                        [
                            sys.executable,
                            os.path.abspath(__file__),
                            "--make",
                            path,
                            "--n",
                            str(nn),
                            "--seed",
                            str(seed),
                            *common,
                        ],
                        check=True,
                    )
                    print(
                        f"# wrote {path} ({nn} x {args.d} fp16) in {time.perf_counter() - t0:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--one",
                "--what",
                what,
                "--n",
                str(n),
                "--n-test",
                str(args.n_test),
                *common,
                "--wds",
                args.wds,
                "--epochs",
                str(args.epochs),
                "--threads",
                str(args.threads),
                "--old-src",
                old_src,
                "--features-dir",
                feat_dir,
            ]
            r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # stderr (progress) passes through
            if r.returncode:
                return 1
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
            if all(m != n for _, m in runs[i + 1 :]):  # no later run uses this N: free the disk
                for suffix in (".npy", ".labels.npy"):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(feat_dir, f"train_{n}{suffix}"))
    finally:
        shutil.rmtree(feat_dir, ignore_errors=True)
        shutil.rmtree(old_src, ignore_errors=True)
    md = render(rows, args)
    if args.out:
        atomic_write_text(args.out, md)
    print(md)
    return 0


def render(rows, args) -> str:
    lines = [
        "# Evaluation at scale: time and peak memory (issue 17)",
        "",
        "SYNTHETIC class-structured features (class means randn(C, D) + 2.0 x Gaussian noise), float16 "
        "memory-mapped .npy files; D = %d, C = %d classes, %d test points; %s."
        % (
            args.d,
            args.c,
            args.n_test,
            (
                "kNN k=20, T=0.07; linear: streaming solver, %d penalties (%s) as heads, %d epoch(s) of the sweep "
                "+ %d epoch(s) of the refit, batch 1024"
                % (len(args.wds.split(",")), args.wds, args.epochs, args.epochs)
            ),
        ),
        "",
        "Machine: %s, %d CPU cores shared with other jobs (load varied), torch threads %d, Python %s."
        % (platform.processor() or platform.machine(), os.cpu_count(), args.threads, platform.python_version()),
        "Command: `PYTHONPATH=src python3 benchmarks/bench_eval_scale.py %s`" % " ".join(sys.argv[1:]),
        "",
        "| protocol | N | time (s) | CPU time (s) | peak RSS (MB) | RSS before eval (MB) | features on disk (MB) | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = {"knn": "kNN (streamed)", "knn_old": "kNN (before issue 17)", "linear": "linear (streaming)"}[r["what"]]
        cpu = r.get("cpu_seconds", float("nan"))
        lines.append(
            f"| {name} | {r['n']:,} | {r['seconds']:.1f} | {cpu:.0f} | {r['peak_mb']:.0f} | {r['rss_before_mb']:.0f} | "
            f"{r['features_mb']:.0f} | {json.dumps(r['result'])} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
