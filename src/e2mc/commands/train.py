"""``e2mc pretrain`` and ``e2mc continue``: translate arguments into a RunConfig and train.

Multi-GPU / multi-node: launch through torchrun, e.g.
``torchrun --nproc_per_node=2 -m e2mc continue ckpt.pth --recipe vicreg_e2mc_imagenet``.
"""

from __future__ import annotations

import argparse
import os
import sys

from e2mc.commands import add_command
from e2mc.config import ADDON_NAMES, METHOD_NAMES, TRANSFORM_NAMES
from e2mc.methods import METHODS

_SHORTCUTS = (  # (flag, config key, type)
    ("--dataset", "data.dataset", str),
    ("--arch", "model.arch", str),
    ("--epochs", "train.epochs", int),
    ("--batch-size", "optim.batch_size", int),
    ("--lr", "optim.lr", float),
    ("--device", "train.device", str),
    ("--precision", "train.precision", str),
    ("--seed", "train.seed", int),
    ("--data-root", "data.root", str),
)


def _common(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", metavar="FILE", help="YAML run config")
    src.add_argument("--recipe", metavar="NAME", help="bundled recipe (`e2mc recipes` lists them)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set optim.lr=0.1 (repeatable)",
    )
    p.add_argument("--out", metavar="DIR", help="run folder (default: the config's out.dir, runs/run unless set)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from checkpoints/last.pt (else its newest usable epoch_N.pt)",
    )
    p.add_argument(
        "--auto-resume",
        action="store_true",
        help="resume when --out already holds a checkpoint of this run, else start it "
        "(for cluster jobs that are requeued with the same command)",
    )
    p.add_argument(
        "--allow-data-change",
        action="store_true",
        help="with --resume: accept training data that changed since the checkpoint (images added or "
        "removed) and recompute the LR schedule for it (--set train.allow_data_change=true)",
    )
    for flag, key, tp in _SHORTCUTS:
        p.add_argument(flag, type=tp, default=None, help=f"shortcut for --set {key}=...")
    p.add_argument(
        "--download",
        action="store_true",
        default=None,
        help="let torchvision download cifar10/cifar100/stl10 if missing (--set data.download=true)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``pretrain`` and ``continue`` parsers."""
    p = add_command(
        sub,
        "pretrain",
        help="pre-train an SSL model (VICReg, SwAV, SimSiam)",
        description="Pre-train from scratch (or from model.init) with a bundled recipe or a YAML config;\n"
        "shortcut flags and --set override it. Writes a run folder (config.yaml, metrics.csv,\n"
        "checkpoints/) and ends with a 'done: ...' line naming it.",
        examples=[
            "e2mc pretrain --recipe digits_vicreg_pretrain --out runs/start --epochs 10",
            "e2mc pretrain --recipe cifar10_vicreg_pretrain --data-root /data/cifar10 --out runs/c10",
            "e2mc pretrain --out runs/start --resume   # continue an interrupted run",
        ],
    )
    _common(p)
    p.add_argument("--method", choices=METHOD_NAMES, help="shortcut for method.name (default: the recipe's/config's)")
    p.set_defaults(func=run, mode="pretrain")
    c = add_command(
        sub,
        "continue",
        help="continue pre-training a checkpoint with E2MC (or another add-on)",
        usage="%(prog)s CHECKPOINT [options]\n       %(prog)s --recipe NAME | --config FILE [options]   "
        "(when it sets model.init)",
        description="Continue pre-training a checkpoint (official VICReg/SwAV/SimSiam layouts, e2mc runs,\n"
        "torchvision/timm names) with an add-on. Prints what it loaded (layout, heads, missing\n"
        "and dropped keys), the add-on and weights in use, and ends with a 'done: ...' line\n"
        "naming the run folder and the next command.",
        examples=[
            "e2mc continue resnet50_fullckpt.pth --recipe vicreg_e2mc_imagenet --data-root /data/imagenet",
            "e2mc continue runs/start/checkpoints/last.pt --method vicreg --addon e2mc --epochs 5 --out runs/e2mc",
            "e2mc continue runs/start/checkpoints/last.pt --addon none --out runs/base   # the control arm",
        ],
    )
    c.add_argument(
        "checkpoint",
        nargs="?",
        metavar="CHECKPOINT",
        help="checkpoint file, run folder's checkpoint, or name (`e2mc zoo`'s vicreg:resnet50-full, ..., "
        "torchvision:ARCH, timm:NAME, random:ARCH); "
        "required unless --recipe/--config sets model.init",
    )
    _common(c)
    c.add_argument(
        "--method", choices=METHOD_NAMES, help="SSL method (default: the recipe/config's, else the checkpoint's)"
    )
    c.add_argument(
        "--fresh-heads",
        action="store_true",
        default=None,
        help="when --method differs from the checkpoint's: keep its backbone, build new heads",
    )
    c.add_argument(
        "--addon",
        choices=ADDON_NAMES,
        help="add-on loss next to the method's loss; none = the base loss only "
        "(default: the recipe's/config's addon.name, else e2mc)",
    )
    c.add_argument(
        "--entropy-weight",
        type=float,
        metavar="W",
        help="weight of the add-on's entropy term (default: the recipe's, else the paper's value "
        "for the method; printed at the start)",
    )
    c.add_argument(
        "--cov-weight",
        type=lambda s: s if s.strip().lower() == "auto" else float(s),
        metavar="W",
        help="weight of the add-on's covariance term, or auto (addon.cov_fraction x the start's base "
        "loss / its covariance term; e2mc's choice) (default: the recipe's, else the paper's value "
        "for the method; printed at the start)",
    )
    c.add_argument(
        "--transform",
        choices=TRANSFORM_NAMES,
        help="map from projector outputs to [0, 1] before the entropy estimate (default: the "
        "recipe's, else the method's: sigmoid for VICReg)",
    )
    c.set_defaults(func=run, mode="continue")


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """The ``key=value`` overrides the arguments ask for (explicit ``--set`` last, so it wins)."""
    out = [f"mode={args.mode}"]
    for flag, key, _ in _SHORTCUTS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            out.append(f"{key}={value}")
    pairs = [
        ("method", "method.name"),
        ("addon", "addon.name"),
        ("entropy_weight", "addon.entropy_weight"),
        ("cov_weight", "addon.cov_weight"),
        ("transform", "addon.transform"),
        ("checkpoint", "model.init"),
        ("fresh_heads", "model.fresh_heads"),
        ("download", "data.download"),
    ]
    for attr, key in pairs:
        value = getattr(args, attr, None)
        if value is not None:
            out.append(f"{key}={value}")
    if args.out:
        out.append(f"out.dir={args.out}")
    if args.resume:
        out.append("out.resume=true")
    if getattr(args, "allow_data_change", False):
        out.append("train.allow_data_change=true")
    return out + list(args.overrides)


GUARD_STOPPED = 4  # exit status of a run the collapse guard stopped (3: interrupted, resumable)


def run(args: argparse.Namespace) -> int:
    """Resolve the config (``e2mc.train.api.resolve_config``, as the Python API does) and train;
    print the run folder."""
    from e2mc.errors import ConfigError
    from e2mc.train.api import resolve_config
    from e2mc.train.loop import Trainer

    if args.config and not os.path.isfile(args.config):
        raise ConfigError(f"--config {args.config}: no such file; check the path or use --recipe NAME")
    cfg = resolve_config(args.mode, args.config or args.recipe, overrides_from_args(args), args.auto_resume)
    trainer = Trainer(cfg)
    main = trainer.dist.is_main  # under torchrun, only rank 0 speaks
    if main:  # on stderr with the run's other log lines; stdout gets the closing "done: ..." line
        print(start_summary(trainer), file=sys.stderr, flush=True)
    run_dir = trainer.fit()
    if trainer.stop_requested:
        if main:
            again = f"e2mc {args.mode} --out {run_dir} --resume"
            if trainer.dist.world_size > 1:  # the same launcher and process count: the run's schedule and data order
                from e2mc.commands import command_line

                again = command_line(getattr(args, "_argv", None), resume=True)
            print(f"interrupted; checkpoint saved. Resume with: {again}")
        return 3
    if main:
        nxt = (
            evaluate_hint(run_dir, cfg)
            if args.mode == "continue"
            else f"e2mc continue {os.path.join(run_dir, 'checkpoints', 'last.pt')} --addon e2mc"
        )
        events = list(getattr(trainer.guard, "events", None) or [])
        if trainer.guard_stopped:  # not a finished run: a script or a job array must be able to tell
            last = events[-1] if events else {}
            print(
                f"stopped by the collapse guard at step {trainer.global_step} ({_count(len(events), 'event')}, the last: "
                f"{last.get('reason', '?')}); the last checkpoint is the best one (step {last.get('restored_step')}). "
                f"See {os.path.join(run_dir, 'guard_events.json')}; lower the LR (--lr) or change "
                "train.guard.* and run again, or evaluate what was kept: " + nxt
            )
            return GUARD_STOPPED
        acted = f"; the collapse guard acted {_count(len(events), 'time')}: see guard_events.json" if events else ""
        print(
            f"done: {args.mode} {cfg.method.name}{addon_text(cfg)}, "
            f"{_count(trainer.global_step, 'step')} ({_count(trainer.epoch, 'full epoch')}) -> {run_dir}{acted} "
            f"(next: {nxt})"
        )
    return GUARD_STOPPED if trainer.guard_stopped else 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def evaluate_hint(run_dir, cfg) -> str:
    """The ``e2mc evaluate`` command a finished continue run suggests; an audio run's: per layer,
    kNN and linear (UAR and accuracy), segments of the run's own length."""
    hint = f"e2mc evaluate {run_dir} --dataset {cfg.data.dataset}"
    from e2mc.data.audio import is_audio_folder

    folder = str(cfg.data.dataset)
    if os.path.isdir(folder) and is_audio_folder(folder):
        a = cfg.data.audio
        hint += (
            f" --protocols knn,linear --layers all --set eval.audio.segment_seconds={a.segment_seconds:g}"
            f" --set eval.audio.min_seconds={a.crop_seconds:g}"
        )
    if os.path.isdir(folder) and not os.path.isdir(os.path.join(folder, "test")):  # no held-out split to score
        hint = hint.replace(f"--dataset {folder}", "--dataset FOLDER", 1) + (
            f", where FOLDER/train/ and FOLDER/test/ hold class folders: {folder} has no test/ split to score on"
        )
    return hint


def addon_text(cfg) -> str:
    """``" + e2mc (entropy_weight 10, cov_weight 1, transform sigmoid)"``, ``" + mmcr (weight 1)"``
    (another add-on: its constructor's settings, ``addon.kwargs`` over the defaults), or
    ``" (no add-on: the base loss only)"``."""
    import inspect

    from e2mc.criteria import ADDONS

    a = cfg.addon
    if a.name == "none":
        return " (no add-on: the base loss only)"
    kwargs = dict(getattr(a, "kwargs", None) or {})
    if a.name == "e2mc":
        fields = [(k, getattr(a, k, None)) for k in ("entropy_weight", "cov_weight", "transform")]
        fields = [(k, v) for k, v in fields if v is not None] + list(kwargs.items())
    else:  # E2MC's typed fields do not apply (a recipe may still hold them)
        params = inspect.signature(ADDONS[a.name]).parameters.values() if a.name in ADDONS else ()
        shown = [p for p in params if p.name != "gather" and p.default is not inspect.Parameter.empty]
        fields = [(p.name, kwargs.pop(p.name, p.default)) for p in shown] + list(kwargs.items())
    parts = [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields]
    return f" + {a.name}" + (f" ({', '.join(parts)})" if parts else "")


def start_summary(trainer) -> str:
    """What the run starts from and trains with: the load report (continue) and the loss in use."""
    cfg, lines = trainer.cfg, []
    if trainer.report is not None:
        lines += ["loaded:"] + [f"  {line}" for line in trainer.report.summary().splitlines()]
    lines.append(f"loss   : {cfg.method.name}{addon_text(cfg)}")
    told = METHODS[cfg.method.name].describe(cfg) if cfg.method.name in METHODS else None
    if told:
        lines.append(f"method : {told}")
    o = cfg.optim
    lr = getattr(trainer, "lr", o.lr)
    scaled = f" (scaled to {lr:g} for the global batch of {trainer.global_batch})" if lr != o.lr else ""
    lines.append(f"optim  : {o.name} lr {o.lr:g}{scaled}, weight decay {o.weight_decay:g}")
    cap = getattr(cfg.train, "max_steps", None)
    length = _count(cfg.train.epochs, "epoch") + (f", at most {_count(cap, 'step')}" if cap else "")
    lines.append(f"run    : {trainer.run_dir} ({length} on {cfg.data.dataset})")
    ds = getattr(getattr(trainer, "loader", None), "dataset", None)
    if ds is not None:  # what the run trains on, counted (an audio folder: its segments)
        audio = getattr(getattr(ds, "info", None), "modality", "image") == "audio"
        seconds = f" of up to {cfg.data.audio.segment_seconds:g} s" if audio else ""
        classes = len(getattr(ds, "classes", None) or [])
        lines.append(
            f"data   : {len(ds)} {'segments' if audio else 'images'}{seconds}"
            + (f", {classes} class{'es' if classes != 1 else ''}" if classes else "")
        )
    return "\n".join(lines)
