"""GPU check of e2mc (issue 13, item 7): one command, at most ~8 minutes on one GPU, a Markdown result.

    python benchmarks/gpu/check.py --out benchmarks/results/gpu_check.md
    python benchmarks/gpu/check.py --dry-run --out /tmp/gpu_check.md     # CPU, tiny sizes, < 1 min

Checks (each uses e2mc's own Trainer, criteria and views; a failing check is recorded, the
others still run; the file is rewritten after every check, so a cut-short run leaves a result):

a. sort path: E2MC on the device (``torch.sort``; on CPU the packed numpy sort is used, so the
   dry run forces the ``torch.sort`` branch) equals the CPU path: loss, entropy, covariance and
   gradients, for sigmoid and gaussian_cdf, on untied and on heavily tied data. Tie order: the
   CPU path breaks ties by row position (stable); CUDA ``torch.sort`` is unstable, so tied values
   may come out in any order. Values are unaffected; the entropy gradient of tied elements may be
   permuted among them, so on tied data the check compares each tie group's gradient sum (the
   covariance gradient does not depend on the order and is inside that sum).
b. precision: bf16 autocast and fp16 autocast + GradScaler training steps (ResNet-50, VICReg +
   E2MC) give finite loss terms and finite weights; the number of steps the scaler skipped
   (its scale backed off) is reported.
c. E2MC's share of a ResNet-50 224 px VICReg step (expander 8192-8192-8192) at batch 256, bf16 +
   channels_last: the Trainer's step timed with E2MC and with the add-on off (goal <= 3%), plus
   E2MC's forward + backward alone on (256, 8192) x 2 views.
d. throughput of the Trainer's step vs a bare PyTorch loop with the same model, views and
   criterion (goal >= 95%).
e. DDP: 2 processes (NCCL on 2 GPUs, else gloo with both processes on the one device; gloo on CPU
   in the dry run) vs 1 process on the concatenated batch: loss per step and weights after 2
   steps (BatchNorm swapped for per-sample norms and deterministic views, so both are exact
   up to float rounding).
f. throughput of the Trainer's DINO + E2MC step on a ViT-S/16 at 224 px (2 x 224 + 8 x 96 crops,
   the official DINO head and EMA teacher, batch 64, bf16) vs benchmarks/bench_steps.py's bare
   loop with the same model, views and loss (goal >= 95%; issue 24 item 6).

Exit status: 0 when every check passed (goals of c/d/f count only on a GPU run), 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if (ROOT / "src" / "e2mc").is_dir():  # measure the tree this script sits in
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from e2mc.fileio import atomic_write_text  # noqa: E402

GPU = dict(
    arch="resnet50",
    img=224,
    batch=256,
    proj=[8192, 8192, 8192],
    amp_steps=12,
    warm=3,
    steps=5,
    reps=3,
    sort_n=512,
    sort_d=2048,
    ddp_arch="resnet18",
    ddp_img=64,
    ddp_batch=16,
    ddp_timeout=240,
    vit_arch="timm:vit_small_patch16_224",
    vit_img=224,
    vit_batch=64,
    vit_heads="{}",
)
DRY = dict(
    arch="resnet_mini:8-16-32",
    img=32,
    batch=8,
    proj=[64, 64],
    amp_steps=2,
    warm=1,
    steps=1,
    reps=1,
    sort_n=64,
    sort_d=32,
    ddp_arch="resnet_mini:8-16-32",
    ddp_img=16,
    ddp_batch=4,
    ddp_timeout=120,
    vit_arch="resnet_mini:8-16-32",
    vit_img=32,
    vit_batch=8,
    vit_heads="{hidden: 32, bottleneck: 16, out: 64}",
)
SHARE_GOAL, THROUGHPUT_GOAL = 0.03, 0.95


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def torch_sort_path():
    """Make ``kernels.sort_columns`` take its non-CPU branch (``torch.sort``) on CPU tensors too."""
    from e2mc.criteria import kernels

    real = kernels.sys
    kernels.sys = types.SimpleNamespace(byteorder="big")
    try:
        yield
    finally:
        kernels.sys = real


def trainer(S: dict, device: torch.device, out: Path, *extra: str):
    """A VICReg + E2MC Trainer (pretrain mode, random init) at the check's sizes."""
    from e2mc.config import load_config
    from e2mc.train.loop import Trainer

    limit = max(2 * S["batch"], 16)
    proj = ", ".join(map(str, S["proj"]))
    cfg = load_config(
        None,
        [
            "data.dataset=digits",
            f"data.image_size={S['img']}",
            f"data.limit={limit}",
            "mode=pretrain",
            f"model.init=random:{S['arch']}",
            f"model.head_sizes={{projector: [{proj}]}}",
            f"optim.batch_size={S['batch']}",
            "optim.name=lars",
            "optim.lr=0.2",
            "optim.lr_scaling=linear",
            "optim.schedule=constant",
            "addon.name=e2mc",
            "train.channels_last=true",
            "train.log_every=1000",
            "train.probe_size=0",
            "train.tensorboard=false",
            f"train.device={device}",
            f"out.dir={out}",
            "out.overwrite=true",
            *extra,
        ],
    )
    t = Trainer(cfg, quiet=True)
    t.model.train()
    return t


def images(S: dict, device: torch.device, k: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randint(0, 256, (S["batch"], 3, S["img"], S["img"]), generator=g, dtype=torch.uint8).to(device)
        for _ in range(k)
    ]


# ---------------------------------------------------------------------------------------- (a)
def check_sort(S, device, dry, tmp):
    from e2mc.criteria import E2MC

    def run(z, transform, dev, forced):
        zz = z.to(dev).requires_grad_(True)
        zs = [zz[:, : z.shape[1] // 2], zz[:, z.shape[1] // 2 :]]
        crit = E2MC(transform=transform, gather=False)
        with torch_sort_path() if forced else contextlib.nullcontext():
            out = crit(zs)
            out["loss"].backward()
        return {k: float(out[k].detach()) for k in ("loss", "entropy", "covariance", "tied")}, zz.grad.detach().cpu()

    def group_sums(z, g):  # per column, the gradient summed over each group of equal values
        zs, order = torch.sort(z, dim=0, stable=True)
        new = torch.ones_like(zs, dtype=torch.bool)
        new[1:] = zs[1:] != zs[:-1]
        gid = new.long().cumsum(0) - 1
        return torch.zeros_like(g).scatter_add_(0, gid, g.gather(0, order))

    gen = torch.Generator().manual_seed(1)
    base = torch.randn(S["sort_n"], S["sort_d"], generator=gen)
    data = {"untied": base, "tied (rounded to 0.1)": (base * 10).round() / 10}
    rows, ok = [], True
    for transform in ("sigmoid", "gaussian_cdf"):
        for kind, z in data.items():
            ref, g_ref = run(z, transform, torch.device("cpu"), forced=False)
            got, g_got = run(z, transform, device, forced=device.type == "cpu")
            vdiff = max(abs(ref[k] - got[k]) / max(abs(ref[k]), 1e-12) for k in ("loss", "entropy", "covariance"))
            scale = float(g_ref.abs().max())
            elem = float((g_ref - g_got).abs().max()) / scale
            tied = kind != "untied"
            gdiff = float((group_sums(z, g_ref) - group_sums(z, g_got)).abs().max()) / scale if tied else elem
            good = vdiff <= 1e-5 and gdiff <= 1e-4 and ref["tied"] == got["tied"]
            ok &= good
            rows.append(
                f"| {transform} | {kind} | {ref['loss']:.6g} | {vdiff:.1e} | {gdiff:.1e}"
                f"{' (tie-group sums)' if tied else ''} | {elem:.1e} | {ref['tied']:.3f} | "
                f"{'ok' if good else 'DIFFERS'} |"
            )
    where = "torch.sort branch forced on CPU (dry run)" if device.type == "cpu" else f"{device} (torch.sort)"
    lines = [
        f"N = {S['sort_n']}, 2 views x D = {S['sort_d'] // 2}; reference: CPU packed sort; compared: {where}. "
        "Tolerances: values 1e-5 relative, gradients 1e-4 of the largest gradient.",
        "",
        "| transform | data | loss | max rel. diff of loss/entropy/cov | grad diff | per-element grad diff | "
        "tied fraction | verdict |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Tie order: CPU breaks ties by row position (stable); CUDA torch.sort is unstable. On tied data the "
        "per-element gradient may be permuted among tied elements (last column, informative); each tie "
        "group's sum must match.",
    ]
    return ("PASS" if ok else "FAIL"), lines


# ---------------------------------------------------------------------------------------- (b)
def check_precision(S, device, dry, tmp):
    lines, ok = (
        [
            "| precision | steps | loss terms finite | weights finite | scaler skipped steps | "
            "scale first -> last | last loss |",
            "|---|---|---|---|---|---|---|",
        ],
        True,
    )
    batches = images(S, device)
    for prec in ("bf16", "fp16"):
        t = trainer(S, device, tmp / f"prec_{prec}", f"train.precision={prec}")
        try:
            skipped, finite, scales, last = 0, True, [], None
            for i in range(S["amp_steps"]):
                before = t.state.scaler.get_scale() if t.state.scaler.is_enabled() else None
                terms = t.train_step(batches[i % len(batches)], scheduler=t.state.scheduler)
                finite &= bool(torch.stack([v.float() for v in terms.values()]).isfinite().all())
                if before is not None:
                    after = t.state.scaler.get_scale()
                    skipped += after < before
                    scales += [before, after] if not scales else [after]
                last = float(terms["loss"])
            wfinite = all(bool(torch.isfinite(p).all()) for p in t.model.parameters())
            good = finite and wfinite and (dry or prec == "bf16" or skipped < S["amp_steps"])
            ok &= good
            sc = f"{scales[0]:g} -> {scales[-1]:g}" if scales else "- (no scaler)"
            lines.append(
                f"| {prec} | {S['amp_steps']} | {finite} | {wfinite} | "
                f"{skipped if prec == 'fp16' else '-'} | {sc} | {last:.5g} |"
            )
        finally:
            t._close()
            del t
    lines += [
        "",
        f"Model {S['arch']} at {S['img']} px, batch {S['batch']}, VICReg + E2MC (sigmoid), LARS; "
        "random images. A skipped step is one where GradScaler backed its scale off (inf/NaN gradients); "
        "the first steps at the initial scale 65536 are expected to be skipped. Verdict: finite terms and "
        "weights" + ("" if dry else ", and fp16 takes at least one step") + ".",
    ]
    return ("PASS" if ok else "FAIL"), lines


# ---------------------------------------------------------------------------------------- (c), (d)
def bare_step(model, views_fn, crit, addon, opt, x, device, channels_last=True):
    """The hand-written loop: views -> model -> VICReg + E2MC -> backward -> LARS step."""
    views = views_fn(x)
    if channels_last:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = model(views)
    loss = crit(out["z"][:2])["loss"] + addon(out["z"][:2])["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def timed(fn, steps, device):
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / steps


def check_speed(S, device, dry, tmp, results):
    from e2mc.criteria import E2MC, build_addon
    from e2mc.train.optim import build_optimizer

    t = trainer(S, device, tmp / "speed", "train.precision=bf16")
    try:
        batches = images(S, device)
        e2mc_addon, no_addon = t.addon, build_addon("none").to(device)
        bare = copy.deepcopy(t.model)
        bare_opt = build_optimizer("lars", bare, lr=t.lr, weight_decay=t.cfg.optim.weight_decay)
        state = {"i": 0}

        def nxt():
            state["i"] += 1
            return batches[state["i"] % len(batches)]

        def trainer_step():
            t.train_step(nxt(), scheduler=t.state.scheduler)

        def bare_fn():
            bare_step(bare, t.views, t.criterion, e2mc_addon, bare_opt, nxt(), device)

        for _ in range(S["warm"]):
            trainer_step()
            bare_fn()
        t.addon = no_addon
        for _ in range(S["warm"]):
            trainer_step()
        times = {"trainer, E2MC": [], "trainer, no add-on": [], "bare loop, E2MC": []}
        for _ in range(S["reps"]):  # interleaved blocks against drift
            t.addon = e2mc_addon
            times["trainer, E2MC"].append(timed(trainer_step, S["steps"], device))
            times["bare loop, E2MC"].append(timed(bare_fn, S["steps"], device))
            t.addon = no_addon
            times["trainer, no add-on"].append(timed(trainer_step, S["steps"], device))
        t.addon = e2mc_addon
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        d = S["proj"][-1]
        z = [torch.randn(S["batch"], d, device=device, requires_grad=True) for _ in range(2)]
        crit = E2MC(transform="sigmoid")

        def alone():
            crit(z)["loss"].backward()

        alone()
        t_alone = timed(alone, max(S["steps"], 3), device)
        mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    finally:
        t._close()
    share = max(0.0, 1 - med["trainer, no add-on"] / med["trainer, E2MC"])
    ratio = med["bare loop, E2MC"] / med["trainer, E2MC"]
    b = S["batch"]
    table = [
        "| step | median s/step | img/s |",
        "|---|---|---|",
        *(f"| {k} | {v:.4f} | {b / v:.1f} |" for k, v in med.items()),
    ]
    setup = (
        f"{S['arch']} at {S['img']} px, expander {'-'.join(map(str, S['proj']))}, batch {b}, 2 views, "
        f"bf16 autocast + channels_last, LARS; {S['warm']} warm-up steps, then {S['reps']} interleaved "
        f"blocks of {S['steps']} timed steps (median block)" + (f"; peak CUDA memory {mem:.1f} GiB" if mem else "")
    )
    goals = not dry
    c_status = ("PASS" if share <= SHARE_GOAL else "MISS") if goals else "RAN (dry run: no goal)"
    d_status = ("PASS" if ratio >= THROUGHPUT_GOAL else "MISS") if goals else "RAN (dry run: no goal)"
    results["c"] = (
        c_status,
        [
            setup,
            "",
            *table,
            "",
            f"E2MC's share of the step: **{share:.2%}** (1 - no-add-on / E2MC step; goal <= "
            f"{SHARE_GOAL:.0%}). E2MC forward + backward alone on ({b}, {d}) x 2 views: "
            f"{t_alone * 1e3:.2f} ms = {t_alone / med['trainer, E2MC']:.2%} of the step.",
        ],
    )
    results["d"] = (
        d_status,
        [
            setup,
            "",
            *table,
            "",
            f"Trainer / bare-loop throughput: **{ratio:.1%}** (goal >= {THROUGHPUT_GOAL:.0%}). "
            "The bare loop uses the same SSLModel, ViewGenerator, VICRegLoss and E2MC modules "
            "and a LARS optimiser, with no GradScaler, scheduler or loss-term bookkeeping.",
        ],
    )


# ---------------------------------------------------------------------------------------- (f)
def check_vit_speed(S, device, dry, tmp):
    """The Trainer's DINO + E2MC step on a ViT-S/16 vs the bare loop of benchmarks/bench_steps.py
    (same model copy, views, criteria, optimiser class); interleaved blocks, median block."""
    from e2mc.config import load_config
    from e2mc.train.loop import Trainer

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_steps import vit_bare

    b, img = S["vit_batch"], S["vit_img"]
    cfg = load_config(
        None,
        [
            "data.dataset=digits",
            f"data.image_size={img}",
            f"data.limit={max(2 * b, 16)}",
            "mode=pretrain",
            f"model.init=random:{S['vit_arch']}",
            f"model.head_sizes={S['vit_heads']}",
            "method.name=dino",
            "method.momentum_schedule=constant",
            "addon.name=e2mc",
            f"optim.batch_size={b}",
            "optim.schedule=constant",
            "train.precision=bf16",
            "train.log_every=1000",
            "train.probe_size=0",
            "train.tensorboard=false",
            f"train.device={device}",
            f"out.dir={tmp / 'vit'}",
            "out.overwrite=true",
        ],
    )
    t = Trainer(cfg, quiet=True)
    try:
        t.model.train()
        batches = images(dict(S, batch=b, img=img), device)
        bare = vit_bare(t)
        state = {"i": 0}

        def nxt():
            state["i"] += 1
            return batches[state["i"] % len(batches)]

        def trainer_step():
            t.train_step(nxt(), scheduler=t.state.scheduler)

        for _ in range(S["warm"]):
            trainer_step()
            bare(nxt())
        times = {"trainer, DINO + E2MC": [], "bare loop, DINO + E2MC": []}
        for r in range(S["reps"]):  # interleaved blocks, order alternating
            order = list(times) if r % 2 == 0 else list(reversed(times))
            for k in order:
                times[k].append(
                    timed(trainer_step if k.startswith("trainer") else lambda: bare(nxt()), S["steps"], device)
                )
        specs = t.views.specs
        mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    finally:
        t._close()
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    ratio = med["bare loop, DINO + E2MC"] / med["trainer, DINO + E2MC"]
    blocks = [bt / tt for tt, bt in zip(*times.values())]
    status = ("PASS" if ratio >= THROUGHPUT_GOAL else "MISS") if not dry else "RAN (dry run: no goal)"
    crops = f"{sum(1 for s in specs if s[0] == img)} x {img} px + {sum(1 for s in specs if s[0] != img)} x {specs[-1][0]} px"
    return status, [
        f"{S['vit_arch']} + DINO head ({'official sizes' if S['vit_heads'] == '{}' else S['vit_heads']}) + EMA "
        f"teacher, batch {b} x {len(specs)} crops ({crops}), DINO loss + E2MC on the global crops, per-parameter "
        f"clip, LARS, bf16 autocast; {S['warm']} warm-up steps, then {S['reps']} interleaved blocks of "
        f"{S['steps']} timed steps (median block)" + (f"; peak CUDA memory {mem:.1f} GiB" if mem else ""),
        "",
        "| step | median s/step | img/s |",
        "|---|---|---|",
        *(f"| {k} | {v:.4f} | {b / v:.1f} |" for k, v in med.items()),
        "",
        f"Trainer / bare-loop throughput: **{ratio:.1%}** (goal >= {THROUGHPUT_GOAL:.0%}); per block: "
        f"{', '.join(f'{x:.1%}' for x in blocks)}. The bare loop is benchmarks/bench_steps.py's `vit_bare`: a copy "
        "of the same SSLModel (student + teacher), the same views and DINOLoss / E2MC modules, LARS, the "
        "centre and teacher EMA by hand, no GradScaler, scheduler or loss-term bookkeeping.",
    ]


# ---------------------------------------------------------------------------------------- (e)
CHILD = "--ddp-child"


def ddp_child(out: str, batch: int, global_batch: int, arch: str, img: int, device: str, backend: str) -> None:
    """One rank (or the single-process reference) of the DDP check: 2 steps, fp32."""
    import torch.distributed as dist

    from e2mc.config import load_config
    from e2mc.train.loop import Trainer

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and backend == "gloo" and not dist.is_initialized():
        dist.init_process_group("gloo")  # e2mc picks NCCL for CUDA; two ranks on one GPU need gloo

    from e2mc.train.distributed import mirrored_views as views
    from e2mc.train.distributed import per_sample_norms as no_bn

    batch, global_batch, img = int(batch), int(global_batch), int(img)
    cfg = load_config(
        None,
        [
            "data.dataset=digits",
            f"data.image_size={img}",
            f"data.limit={global_batch * 4}",
            "mode=pretrain",
            f"model.init=random:{arch}",
            "model.head_sizes={projector: [64, 64]}",
            f"optim.batch_size={batch}",
            "optim.lr=0.05",
            "optim.schedule=constant",
            "addon.name=e2mc",
            "train.log_every=1",
            "train.probe_size=0",
            "train.max_steps=2",
            "train.tensorboard=false",
            f"train.device={device}",
            f"out.dir={out}",
        ],
    )
    Trainer(cfg, model_fn=no_bn, views_fn=views, quiet=True).fit()
    from e2mc.train.distributed import exit_if_process_group

    exit_if_process_group(0)  # torch's gloo threads can abort the interpreter's shutdown (exit -6)


def _ddp_setup(S, device):
    if device.type == "cuda" and torch.cuda.device_count() >= 2:
        return "nccl", "auto", "cuda:0", "NCCL, 2 GPUs"
    if device.type == "cuda":
        return "gloo", str(device), str(device), f"gloo, both processes on {device}"
    return "gloo", "cpu", "cpu", "gloo on CPU"


def start_ddp(S, device, tmp) -> subprocess.Popen:
    """Launch the 2-process run (torchrun) in the background; ``check_ddp`` waits for it."""
    backend, dev2, _, _ = _ddp_setup(S, device)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
    )
    b = S["ddp_batch"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={port}",
        "--master_addr=127.0.0.1",
        __file__,
        CHILD,
        str(tmp / "ddp2"),
        str(b),
        str(2 * b),
        S["ddp_arch"],
        str(S["ddp_img"]),
        dev2,
        backend,
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def check_ddp(S, device, dry, tmp, proc=None):
    from e2mc.train.run import read_metrics

    backend, _, dev1, how = _ddp_setup(S, device)
    b = S["ddp_batch"]
    p = proc or start_ddp(S, device, tmp)
    try:  # the 1-process reference runs here meanwhile (this process has its imports done)
        ddp_child(str(tmp / "ddp1"), 2 * b, 2 * b, S["ddp_arch"], S["ddp_img"], dev1, backend)
        text, _ = p.communicate(timeout=S["ddp_timeout"])
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    if p.returncode != 0:
        tail = (text or "").strip().splitlines()[-4:]
        return "FAIL", [f"the 2-process run ({how}) exited with {p.returncode}:", "", "```", *tail, "```"]
    runs = {k: tmp / k for k in ("ddp2", "ddp1")}
    loss = {
        k: [float(r["loss"]) for r in read_metrics(d / "metrics.csv") if r["phase"] == "train"] for k, d in runs.items()
    }
    w = {
        k: torch.load(d / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]
        for k, d in runs.items()
    }
    ldiff = max(abs(a - c) / max(abs(c), 1e-12) for a, c in zip(loss["ddp2"], loss["ddp1"]))
    wdiff = max(float((w["ddp2"][k].float() - w["ddp1"][k].float()).abs().max()) for k in w["ddp1"])
    moved = max(float((w["ddp1"][k].float()).abs().max()) for k in w["ddp1"])
    good = len(loss["ddp2"]) == len(loss["ddp1"]) == 2 and ldiff <= 1e-4 and wdiff <= 1e-4 * max(moved, 1.0)
    return ("PASS" if good else "FAIL"), [
        f"{how}; {S['ddp_arch']} at {S['ddp_img']} px (BatchNorm -> GroupNorm/LayerNorm, deterministic views), "
        f"VICReg + E2MC, fp32, 2 steps: 2 x {b} per rank vs 1 x {2 * b}.",
        "",
        "| | 2 processes | 1 process |",
        "|---|---|---|",
        *(f"| loss step {i + 1} | {a:.7g} | {c:.7g} |" for i, (a, c) in enumerate(zip(loss["ddp2"], loss["ddp1"]))),
        "",
        f"max relative loss difference {ldiff:.1e} (tolerance 1e-4); max weight difference after 2 steps "
        f"{wdiff:.1e} (tolerance 1e-4 x max |w| = {1e-4 * max(moved, 1.0):.1e}).",
    ]


# ---------------------------------------------------------------------------------------- driver
TITLES = {
    "a": "a. CUDA sort path equals the CPU path",
    "b": "b. bf16 and fp16 + GradScaler steps",
    "c": "c. E2MC's share of a VICReg step",
    "d": "d. Trainer throughput vs a bare loop",
    "e": "e. 2-process DDP equivalence",
    "f": "f. ViT-S/16 DINO Trainer throughput vs a bare loop",
}


def write(path: Path, header: list[str], results: dict) -> None:
    lines = [
        *header,
        "",
        "| check | result |",
        "|---|---|",
        *(f"| {TITLES[k]} | {results[k][0]} |" for k in TITLES if k in results),
        "",
    ]
    for k in TITLES:
        if k in results:
            lines += [f"## {TITLES[k]}", "", f"**{results[k][0]}**", "", *results[k][1], ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [CHILD]:
        out, batch, global_batch, arch, img, device, backend = argv[1:8]
        ddp_child(out, int(batch), int(global_batch), arch, int(img), device, backend)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.md"), help="Markdown result file")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU (gloo): checks the script end to end")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --dry-run)")
    ap.add_argument("--only", default="abcdef", help="checks to run, e.g. 'ace'")
    ap.add_argument(
        "--batch",
        type=int,
        default=None,
        help="per-step batch of b-d (default 256; 8 with --dry-run), e.g. 128 on a GPU with less than ~40 GiB",
    )
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "no CUDA device here: run on a GPU machine, or pass --dry-run to check the script on CPU", file=sys.stderr
        )
        return 2
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    S = dict(DRY if args.dry_run else GPU)
    if args.batch:
        S["batch"] = args.batch
    torch.manual_seed(0)
    out = Path(args.out)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    header = [
        "# e2mc GPU check" + (" (dry run: tiny sizes on CPU, goals not applied)" if args.dry_run else ""),
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}; device: {name} ({device}), "
        f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} CUDA device(s); torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}; Python {platform.python_version()}",
        f"- command: `python benchmarks/gpu/check.py{' --dry-run' if args.dry_run else ''}"
        f"{f' --batch {args.batch}' if args.batch else ''} --out {args.out}`",
    ]
    results: dict = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="e2mc_gpu_check_") as tmpdir:
        tmp = Path(tmpdir)
        # dry run: start the 2-process run now, so its start-up overlaps the other checks (on a GPU it
        # runs alone, last, so that it cannot disturb the timings of c, d and f)
        ddp_proc = start_ddp(S, device, tmp) if args.dry_run and "e" in args.only else None
        for key, fn in (
            ("a", check_sort),
            ("b", check_precision),
            ("cd", check_speed),
            ("f", check_vit_speed),
            ("e", check_ddp),
        ):
            if not set(key) & set(args.only):
                continue
            t0 = time.perf_counter()
            print(f"[{time.perf_counter() - start:6.1f}s] {', '.join(TITLES[k] for k in key)} ...", flush=True)
            try:
                if key == "cd":
                    fn(S, device, args.dry_run, tmp, results)
                elif key == "e":
                    results[key] = fn(S, device, args.dry_run, tmp, ddp_proc)
                else:
                    results[key] = fn(S, device, args.dry_run, tmp)
            except Exception as exc:  # recorded, and the next checks still run
                tb = traceback.format_exc().strip().splitlines()
                for k in key:
                    results[k] = ("FAIL", [f"raised {type(exc).__name__}: {exc}", "", "```", *tb[-6:], "```"])
            for k in key:
                if k in results:
                    results[k][1].append(f"\n({time.perf_counter() - t0:.1f} s)")
                    print(f"    {TITLES[k]}: {results[k][0]}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            write(out, header + [f"- wall time so far: {time.perf_counter() - start:.0f} s"], results)
        if ddp_proc is not None and ddp_proc.poll() is None:  # check e was not reached
            ddp_proc.kill()
            ddp_proc.wait()
    print(f"wrote {out} ({time.perf_counter() - start:.0f} s)")
    bad = [k for k, (status, _) in results.items() if status in ("FAIL", "MISS")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
