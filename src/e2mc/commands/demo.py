"""``e2mc demo``: pre-train, continue with and without E2MC, evaluate, report; offline, on CPU."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from e2mc.commands import add_command


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes comma-separated integers, e.g. 0,1,2 (got {text!r})") from None
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds needs at least one integer, e.g. 0,1,2")
    return seeds


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "demo",
        help="the whole idea in a few CPU minutes, offline (embedded digits data)",
        description=(
            "Pre-train a small ResNet with VICReg on scikit-learn's digits (cached after the first run),\n"
            "continue it with the base loss only and with base + E2MC for each seed, evaluate the start\n"
            "and both arms (kNN, linear probe, RankMe, entropy, spectrum), print the comparison and the\n"
            "verdict, and write results.json (with each stage's wall time) and the report (Markdown,\n"
            "HTML, PNG) into --out.\n"
            "--modality audio: the same on synthetic animal vocalisations (callers with their own f0\n"
            "contour and harmonics, shared call types, noise) with a tiny wav2vec2, evaluated per layer\n"
            "(kNN and linear probe, UAR and accuracy); --pretrain-epochs/--continue-epochs count steps there."
        ),
        examples=[
            "e2mc demo",
            "e2mc demo --out my-demo --seeds 0,1,2,3,4",
            "e2mc demo --pretrain-epochs 5 --continue-epochs 2 --seeds 0,1   # a quick look",
            "e2mc demo --modality audio",
        ],
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default: ./e2mc-demo-<date>-<time>)")
    p.add_argument("--seeds", type=_seeds, default=(0, 1, 2), help="training seeds of each arm (default 0,1,2)")
    p.add_argument(
        "--modality",
        choices=("image", "audio"),
        default="image",
        help="image: a ResNet on digits; audio: a tiny wav2vec2 on synthetic vocalisations",
    )
    p.add_argument(
        "--pretrain-epochs",
        type=int,
        default=None,
        help="epochs of the VICReg start (default 40; audio: optimiser steps, default 200)",
    )
    p.add_argument(
        "--continue-epochs",
        type=int,
        default=None,
        help="epochs of each continuation (default 10; audio: optimiser steps, default 40)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where the pre-trained start is cached (default $E2MC_CACHE or ~/.cache/e2mc)",
    )
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (default 1: fastest for this tiny model on a shared machine; "
        "0 keeps torch's default)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes for the independent continuations (2 arms x seeds), each with --threads "
        "threads (default 0: one per CPU core; 1: one after another in this process)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every training stage, e.g. --set train.max_steps=2 (repeatable)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from e2mc.audiodemo import AudioDemoConfig, run_audio_demo
    from e2mc.demo import DemoConfig, run_demo
    from e2mc.errors import ConfigError

    out = args.out or Path(time.strftime("e2mc-demo-%Y%m%d-%H%M%S"))
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output folder {out} exists and is not empty; pass a new --out")
    extra = {}
    for item in args.overrides:
        if "=" not in item:
            raise ConfigError(f"--set takes KEY=VALUE (e.g. train.max_steps=2), got {item!r}")
        key, value = item.split("=", 1)
        extra[key.strip()] = value
    if args.workers < 0:
        raise ConfigError("--workers must be 0 (one per CPU core) or a positive number of processes")
    audio = args.modality == "audio"
    kind = AudioDemoConfig if audio else DemoConfig
    lengths = {}
    for name in ("pretrain_epochs", "continue_epochs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        lengths[name] = value if value is not None else kind.__dataclass_fields__[name].default
    cfg = kind(
        out=out,
        seeds=args.seeds,
        **lengths,
        cache_dir=args.cache_dir,
        device=args.device,
        threads=args.threads or None,
        workers=args.workers or None,
        extra=extra,
    )
    (run_audio_demo if audio else run_demo)(cfg)
    return 0
