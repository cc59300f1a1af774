"""Throughput of e2mc's training step vs a bare hand-written PyTorch loop (same model, views,
criterion VICReg + E2MC, precision bf16 autocast + channels_last), interleaved in one run.

    python benchmarks/bench_train.py [--steps 6] [--warmup 2] [--batch 256] [--threads 1]

Data: real CIFAR-10 from /work/shared/data/cifar10 (a class-balanced subset) when present,
random uint8 images otherwise (the output says which). Writes benchmarks/results/train_cpu.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

CIFAR = "/work/shared/data/cifar10"


def bare_step(model, views_fn, vicreg, e2mc, opt, images):
    """The hand-written loop: views -> model -> VICReg + E2MC -> backward -> LARS step."""
    views = [v.contiguous(memory_format=torch.channels_last) for v in views_fn(images)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model.backbone(torch.cat(views))
        z = model.projector(feats).split(images.shape[0])
    loss = vicreg(list(z))["loss"] + e2mc(list(z))["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_cpu.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from e2mc.config import load_config
    from e2mc.criteria import E2MC, VICRegLoss
    from e2mc.models.model import SSLModel
    from e2mc.train.loop import Trainer
    from e2mc.train.optim import build_optimizer

    n = args.batch * (args.steps + args.warmup)
    use_real = os.path.isdir(CIFAR)
    dataset = CIFAR if use_real else "digits"
    overrides = [
        f"data.dataset={dataset}",
        f"data.limit={n}",
        "data.image_size=32",
        "mode=pretrain",
        "model.init=random:resnet18",
        "model.cifar_stem=true",
        "model.head_sizes={projector: [2048, 2048]}",
        f"optim.batch_size={args.batch}",
        "optim.name=lars",
        "optim.lr=0.3",
        "optim.schedule=constant",
        "addon.name=e2mc",
        "train.precision=bf16",
        "train.channels_last=true",
        "train.log_every=10",
        "train.probe_size=0",
        "train.tensorboard=false",
        "out.dir=/tmp/e2mc_bench_train",
        "out.overwrite=true",
    ]
    t = Trainer(load_config(None, overrides), quiet=True)
    if use_real:
        images = torch.stack([t.dataset[i][0] for i in range(n)])
    else:
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    batches = list(images.split(args.batch))
    torch.manual_seed(0)
    bare = SSLModel.build("vicreg", "resnet18", cifar_stem=True, projector=[2048, 2048])
    bare.load_state_dict(t.model.state_dict())
    bare.to(memory_format=torch.channels_last).train()
    bare_opt = build_optimizer("lars", bare, lr=0.3, weight_decay=1e-6)
    vicreg, e2mc = VICRegLoss(), E2MC(transform="sigmoid", entropy_weight=10.0, cov_weight=1.0)

    times = {"e2mc": [], "bare": []}
    t.model.train()
    for i, x in enumerate(batches):
        for name in ("e2mc", "bare") if i % 2 == 0 else ("bare", "e2mc"):  # interleaved, alternating order
            start = time.perf_counter()
            if name == "e2mc":  # the Trainer's per-step work: step, bookkeeping, periodic flush
                t._pending.append(t.train_step(x, scheduler=t.state.scheduler))
                t.state.global_step += 1
                if t.global_step % t.cfg.train.log_every == 0:
                    t._flush("train")
            else:
                bare_step(bare, t.views, vicreg, e2mc, bare_opt, x)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
        print(f"step {i}: " + " ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items() if v), file=sys.stderr)
    t._pending = []
    ips = {k: args.batch * len(v) / sum(v) for k, v in times.items()}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ratio = ips["e2mc"] / ips["bare"]
    lines = [
        "# Training-loop throughput: e2mc Trainer step vs bare PyTorch loop",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}; machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (shared), torch {torch.__version__}, {args.threads} thread(s)",
        f"- command: `python benchmarks/bench_train.py --steps {args.steps} --warmup {args.warmup} "
        f"--batch {args.batch} --threads {args.threads}`",
        f"- data: {'real CIFAR-10 (' + CIFAR + ')' if use_real else 'random uint8 images (CIFAR-10 not found)'}, "
        f"32 px, batch {args.batch}, 2 VICReg views (kornia, on device)",
        "- model: ResNet-18 CIFAR stem + projector 512-2048-2048; criterion VICReg + E2MC (10/1, sigmoid); "
        "LARS; bf16 autocast + channels_last",
        f"- {args.warmup} warm-up steps, then {args.steps} timed steps each, interleaved (alternating order)",
        "",
        "| loop | img/s | mean s/step |",
        "|---|---|---|",
        *(f"| {k} | {ips[k]:.1f} | {sum(v) / len(v):.2f} |" for k, v in times.items()),
        "",
        f"e2mc / bare throughput: **{ratio:.1%}** (target >= 90%). Peak RSS of the process: {rss:.0f} MiB.",
    ]
    if torch.cuda.is_available():
        lines.append(f"CUDA max memory allocated: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
