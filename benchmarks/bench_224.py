"""The 224 px ImageNet path on CPU: loader throughput per worker, e2mc's training step vs a bare
PyTorch loop, peak memory (issue 13, item 6).

    nice -n 5 python benchmarks/bench_224.py [--batch 8] [--warmup 1] [--pairs 3] [--images 64]
        [--workers 0 1 2] [--precision bf16] [--threads 2] [--out FILE] [--smoke]

Setup: ``--images`` synthetic 500x375 JPEGs (``bench_loader.make_jpegs``: about the size of an
ImageNet JPEG) in a temp ``<root>/train/<class>/`` folder, read as ``data.dataset=imagenet``
(``StreamingImageFolder``) through the ``vicreg_e2mc_imagenet`` recipe: ResNet-50 + the
2048-8192-8192-8192 expander (the official VICReg layout, random init: ``mode=pretrain``),
VICReg 25/25/1 + E2MC (10/1, sigmoid, eps 1e-7), LARS, bf16 autocast + channels_last (the
recipe's ``train.precision``, which applies on CPU too), views = the VICReg recipe (2 x 224
random-resized crops of the full image cut in the loader workers; flip/jitter/grayscale/blur/
solarisation on the device, here the CPU).

1. Loader: ``DataLoader(training_dataset(dataset, views))`` as the Trainer builds it, for each
   ``--workers`` count (interleaved over 2 rounds); images/s after the first batch (worker start-up
   excluded), per worker = total / workers (0 workers: the main process does the work).
2. Steps: batches pre-loaded from that loader, fed to (a) the Trainer's per-step work
   (``train_step`` + loss-term bookkeeping, the periodic flush with its finiteness check, the
   signal flags: what ``_run_epoch`` does per batch) and (b) a bare loop with the same SSLModel
   weights, ViewGenerator, VICRegLoss + E2MC modules and LARS (no bookkeeping, no checks, no
   scheduler/GradScaler). One seeded warm-up step each from identical weights must give the same
   loss (the two do the same work); then ``--pairs`` timed pairs, the order alternating
   (A/B, B/A, ...) against drift from other jobs. Ratio = bare s/step / e2mc s/step per pair; the
   median is the headline.
3. Memory: peak RSS (``VmHWM``, reset per phase via ``/proc/self/clear_refs``) of the process
   during the first e2mc step while only e2mc's model exists (what a user's run needs), then per
   timed step with both models resident; the largest loader worker's peak (``RUSAGE_CHILDREN``).

``--smoke``: resnet_mini at 64 px on 8 small JPEGs, batch 4, 1 pair, workers 0 and 1 (a test runs
it so the script does not rot). Writes Markdown to ``--out`` (default
benchmarks/results/train_224_cpu.md; atomically).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loader import make_jpegs

from e2mc.fileio import atomic_write_text


def rss_peak_reset() -> bool:
    """Reset this process's peak RSS (VmHWM); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rss_mib(field: str = "VmHWM") -> float:
    """``VmHWM`` (peak since the last reset) or ``VmRSS`` of this process in MiB; ru_maxrss fallback."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
        flags = next((ln for ln in out.splitlines() if ln.startswith("Flags:")), "")
        if "avx512f" in flags:
            model += ", AVX-512" + (
                " with BF16" if "avx512_bf16" in flags or "amx_bf16" in flags else " without BF16/AMX"
            )
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{model}, {os.cpu_count()} cores"


def make_trainer(args, root: str, out_dir: str):
    from e2mc.config import load_config
    from e2mc.train.loop import Trainer

    sets = [
        f"data.root={root}",
        "data.num_workers=0",
        "mode=pretrain",
        f"model.init=random:{args.arch}",
        f"model.arch={args.arch}",
        f"optim.batch_size={args.batch}",
        "optim.restore_state=false",
        f"train.precision={args.precision}",
        "train.log_every=2",
        "train.probe_size=0",
        "train.tensorboard=false",
        f"out.dir={out_dir}",
        "out.overwrite=true",
    ]
    if args.smoke:
        sets += ["data.image_size=32", "model.head_sizes={projector: [64, 64, 64]}"]
    return Trainer(load_config("vicreg_e2mc_imagenet", sets), quiet=True)


def bench_loader(args, dataset, views) -> tuple[list, dict, float]:
    """Images/s per worker count (2 interleaved rounds, first batch excluded) and the batches
    for the step benchmark (from the 0-worker loader: the same crops for both loops)."""
    from torch.utils.data import DataLoader

    from e2mc.data import training_dataset

    train_ds = training_dataset(dataset, views)
    rates: dict = {w: [] for w in args.workers}
    batches: list = []
    for r in range(2):
        for w in args.workers if r == 0 else list(reversed(args.workers)):
            loader = DataLoader(
                train_ds,
                batch_size=args.batch,
                shuffle=True,
                num_workers=w,
                drop_last=True,
                generator=torch.Generator().manual_seed(r),
            )
            it = iter(loader)
            first = next(it)
            start, n = time.perf_counter(), 0
            for crops, _ in it:
                n += crops[0].shape[0]
                if w == 0 and r == 0:
                    batches.append(crops)
            rates[w].append(n / (time.perf_counter() - start))
            if w == 0 and r == 0:
                batches.insert(0, first[0])
            del it, loader
    worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return batches, rates, worker_peak


def bare_step(model, views_fn, vicreg, e2mc, opt, crops, amp_dtype):
    """The hand-written loop: views -> model -> VICReg + E2MC -> backward -> LARS step."""
    views = [v.contiguous(memory_format=torch.channels_last) for v in views_fn(crops)]
    with torch.autocast("cpu", dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        z = model(views)["z"]
    loss = vicreg(z[:2])["loss"] + e2mc(z[:2])["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def e2mc_step(t, crops):
    """The Trainer's per-batch work in ``_run_epoch`` (no checkpoint: none is due in a run)."""
    from e2mc.train import distributed as D

    terms = t.train_step(crops, scheduler=t.state.scheduler)
    t.state.global_step += 1
    t.state.step_in_epoch += 1
    t._pending.append(terms)
    if t.global_step % t.cfg.train.log_every == 0:
        t._flush("train")
    D.any_flag(t.save_requested, t.dist), D.any_flag(t.stop_requested, t.dist)
    t._done()
    return terms["loss"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per loop (the first is the seeded check)")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (resnet_mini, 64 px), for the test")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_224_cpu.md"))
    args = ap.parse_args(argv)
    args.arch = "resnet50"
    if args.smoke:
        args.arch, args.batch, args.pairs, args.images, args.warmup = "resnet_mini", 4, 1, 8, 1
        args.workers = [0, 1]
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="e2mc-bench-224-")
    paths = make_jpegs(tmp, args.images)
    if args.smoke:  # small JPEGs, still non-square
        from PIL import Image

        for p in paths:
            Image.open(p).resize((96, 72)).save(p, quality=90)
    kib = sum(os.path.getsize(p) for p in paths) / len(paths) / 1024
    from e2mc.data import ViewGenerator, build_dataset
    from e2mc.train.optim import build_optimizer

    # 1. loader (before any model exists, so the forked workers are small)
    size = 32 if args.smoke else None
    dataset = build_dataset("imagenet", "train", root=tmp, image_size=size)
    info = dataset.info
    views = ViewGenerator("vicreg", size or info.image_size, info.mean, info.std, "cpu")
    batches, rates, worker_peak = bench_loader(args, dataset, views)
    need = 2 * args.warmup + 2 * args.pairs
    if len(batches) < 2:
        raise SystemExit(f"--images {args.images} gives fewer than 2 batches of {args.batch}; raise --images")
    views_ms = []
    for b in batches[:3]:  # the device-side half of the views (flip, jitter, gray, blur, solarise)
        s = time.perf_counter()
        views(b)
        views_ms.append(1000 * (time.perf_counter() - s))
    print(f"loader: {rates}", file=sys.stderr)

    # 2. steps: e2mc's model first, alone, for its peak memory
    out_dir = os.path.join(tmp, "run")
    t = make_trainer(args, tmp, out_dir)
    t.model.train()
    init_path = os.path.join(tmp, "init.pt")
    torch.save(t.model.state_dict(), init_path)  # the bare loop starts from the same weights
    batch = lambda i: batches[i % len(batches)]
    rss_peak_reset()
    torch.manual_seed(123)
    s = time.perf_counter()
    loss_e2mc = float(e2mc_step(t, batch(0)))
    first = {"e2mc": time.perf_counter() - s}
    peak_alone = rss_mib()
    print(f"e2mc warm-up step {first['e2mc']:.1f}s, peak RSS {peak_alone:.0f} MiB", file=sys.stderr)

    from e2mc.models.model import SSLModel

    bare = SSLModel.build("vicreg", args.arch, **t.model.head_sizes)
    bare.load_state_dict(torch.load(init_path))
    os.unlink(init_path)
    bare.to(memory_format=torch.channels_last).train()
    o = t.cfg.optim
    bare_opt = build_optimizer(
        "lars",
        bare,
        lr=t.lr,
        weight_decay=o.weight_decay,
        momentum=o.momentum,
        exclude_bias_and_norm=o.exclude_bias_and_norm,
    )
    vicreg, e2mc = t.method.build_criterion(t.cfg), t.method.build_addon(t.cfg)  # the recipe's modules
    bare_fn = lambda i: bare_step(bare, t.views, vicreg, e2mc, bare_opt, batch(i), t.amp_dtype)
    torch.manual_seed(123)
    s = time.perf_counter()
    loss_bare = float(bare_fn(0))
    first["bare"] = time.perf_counter() - s
    print(f"bare warm-up step {first['bare']:.1f}s; losses e2mc {loss_e2mc:.6g} bare {loss_bare:.6g}", file=sys.stderr)
    for i in range(1, args.warmup):
        e2mc_step(t, batch(i))
        bare_fn(i)
    times: dict = {"e2mc": [], "bare": []}
    peaks: dict = {"e2mc": [], "bare": []}
    for p in range(args.pairs):
        i = args.warmup + p
        for name in ("e2mc", "bare") if p % 2 == 0 else ("bare", "e2mc"):
            rss_peak_reset()
            s = time.perf_counter()
            e2mc_step(t, batch(i)) if name == "e2mc" else bare_fn(i)
            times[name].append(time.perf_counter() - s)
            peaks[name].append(rss_mib())
        print(f"pair {p}: e2mc {times['e2mc'][-1]:.1f}s bare {times['bare'][-1]:.1f}s", file=sys.stderr)
    t._pending = []
    t._close()
    total = time.perf_counter() - t0

    # report
    ratios = [b / e for e, b in zip(times["e2mc"], times["bare"])]
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = statistics.median(ratios)
    load = os.getloadavg()
    same = abs(loss_e2mc - loss_bare) <= 1e-4 * max(1.0, abs(loss_bare))
    cmd = "nice -n 5 python benchmarks/bench_224.py " + " ".join(argv if argv is not None else sys.argv[1:])
    widths = [t.model.backbone.out_dim, *t.model.head_sizes["projector"]]
    model = f"{'ResNet-50' if args.arch == 'resnet50' else args.arch} + expander {'-'.join(map(str, widths))}"
    prec = "bf16 autocast" if args.precision == "bf16" else "fp32"
    lines = [
        "# The 224 px path on CPU: loader, e2mc step vs bare loop, peak memory"
        + (" (SMOKE sizes)" if args.smoke else ""),
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}; machine: {machine()}, {platform.system()} "
        f"(KVM guest); torch {torch.__version__}, {args.threads} thread(s)",
        f"- load: the 2 cores are shared with other jobs (other helpers' tests/benchmarks): load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) at the end; this run under `nice -n 5`, "
        f"{total / 60:.1f} min in all",
        f"- command: `{cmd.strip()}`",
        f"- data: {args.images} synthetic {'96x72' if args.smoke else '500x375'} JPEGs (quality 90, mean {kib:.0f} KiB) "
        f"as `data.dataset=imagenet` (StreamingImageFolder), recipe `vicreg_e2mc_imagenet`",
        f"- model: {model}, random init (`mode=pretrain`); VICReg 25/25/1 + E2MC 10/1 sigmoid eps 1e-7; LARS "
        f"(lr {t.lr:g}, wd {o.weight_decay:g}, bias/norm excluded); {prec} + channels_last (the recipe's "
        "`train.precision`; it applies on CPU too)",
        f"- views: VICReg recipe, {views.specs[0][0]} px: random-resized crops of the full image in the loader "
        "(decode + 2 crops per image), flip/jitter/grayscale/blur/solarise on the device (CPU) in the step",
        "",
        "## Loader (decode + 2 random-resized crops per image, in the workers)",
        "",
        "| workers | images/s (median of 2 rounds) | images/s per worker | rounds |",
        "|---|---|---|---|",
        *(
            f"| {w} | {statistics.median(r):.1f} | {statistics.median(r) / max(w, 1):.1f} | "
            f"{', '.join(f'{x:.1f}' for x in r)} |"
            for w, r in rates.items()
        ),
        "",
        f"Device-side half of the views (main process, one batch of {args.batch}, 2 views): "
        f"{statistics.median(views_ms):.0f} ms (median of {len(views_ms)}); it runs inside each step below. "
        f"Largest loader worker's peak RSS: {worker_peak:.0f} MiB. With 2 cores shared, more workers than free "
        "cores cannot add throughput.",
        "",
        f"## Training step, batch {args.batch} x 2 views",
        "",
        f"Seeded warm-up step from identical weights: loss e2mc {loss_e2mc:.6f}, bare {loss_bare:.6f} "
        f"({'equal: the two loops do the same work' if same else 'DIFFERENT: the loops do not do the same work'}); "
        f"warm-up times e2mc {first['e2mc']:.1f} s, bare {first['bare']:.1f} s (not counted). "
        f"Then {args.pairs} timed pairs, order alternating (e2mc first in even pairs).",
        "",
        "| pair | e2mc s/step | bare s/step | e2mc / bare throughput | peak RSS during e2mc step (MiB) | during bare step (MiB) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {p} | {times['e2mc'][p]:.2f} | {times['bare'][p]:.2f} | {ratios[p]:.1%} | {peaks['e2mc'][p]:.0f} | "
            f"{peaks['bare'][p]:.0f} |"
            for p in range(args.pairs)
        ),
        f"| **median** | **{med['e2mc']:.2f}** ({args.batch / med['e2mc']:.2f} img/s) | **{med['bare']:.2f}** "
        f"({args.batch / med['bare']:.2f} img/s) | **{ratio:.1%}** | | |",
        "",
        f"e2mc / bare throughput, median of the per-pair ratios: **{ratio:.1%}** (goal >= 90%; "
        f"{'met' if ratio >= 0.9 else 'NOT met'}); sum of times: {sum(times['bare']) / sum(times['e2mc']):.1%}.",
        "",
        "## Peak memory",
        "",
        f"- one e2mc step with only e2mc's model in the process (Trainer + data + views; what a user's run "
        f"needs at this batch): **{peak_alone:.0f} MiB** peak RSS",
        f"- during the timed steps both models (and both optimisers' momentum) are resident: peak RSS "
        f"{max(peaks['e2mc']):.0f} MiB (e2mc steps) vs {max(peaks['bare']):.0f} MiB (bare steps)",
        f"- process peak overall (ru_maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
        f"largest loader worker: {worker_peak:.0f} MiB",
        "",
        "How to read: the ratio compares steps measured back to back on the same batch index, so load "
        "from other jobs that changes slowly cancels; a spike during one step does not, which is why the "
        "median over pairs is the headline. Absolute times depend on the load (see above) and are not "
        "this CPU's unloaded speed.",
    ]
    if len(batches) < need:
        lines.append(f"(batches reused: {len(batches)} distinct batches for {need} steps)")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, text)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
