"""``e2mc inspect`` (what is in a checkpoint) and ``e2mc export`` (write it in another layout)."""

from __future__ import annotations

import argparse

from e2mc.commands import add_command
from e2mc.config import METHOD_NAMES
from e2mc.methods import METHODS

EXPORT_CHOICES = (
    "original",
    "safetensors",
    *(layout for m in METHODS.values() for layout in m.layouts),  # each method's official layouts
    "torchvision",
    "timm",
    "transformers",
    "lightning",
    "e2mc",
    "state_dict",
)


def _load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", default=None, help="force the checkpoint layout (default: detect)")
    p.add_argument(
        "--method",
        default=None,
        choices=METHOD_NAMES,
        help="method whose heads to build/check (default: the checkpoint's)",
    )
    p.add_argument("--arch", default=None, help="backbone arch (default: detected from the weights)")
    p.add_argument(
        "--fresh-heads",
        action="store_true",
        help="on a method mismatch, drop the checkpoint's heads and build new ones",
    )


def register(subparsers) -> None:
    """Add the ``inspect`` and ``export`` sub-commands."""
    p = add_command(
        subparsers,
        "inspect",
        help="show what a checkpoint holds and how e2mc loads it",
        description="Load a checkpoint the way `continue`/`evaluate` would and print its load report:\n"
        "detected layout, architecture, method and heads, epoch, missing/unexpected/dropped keys,\n"
        "whether an optimizer state is stored, and the parameter counts. Nothing is written.",
        examples=[
            "e2mc inspect resnet50_fullckpt.pth",
            "e2mc inspect runs/e2mc/checkpoints/last.pt --json",
            "e2mc inspect torchvision:resnet50",
            "e2mc inspect vicreg:resnet50-full   # downloads it once (see `e2mc zoo`)",
        ],
    )
    p.add_argument(
        "path", help="checkpoint file, or a name: `e2mc zoo`'s, torchvision:<arch>, timm:<name>, random:<arch>"
    )
    _load_args(p)
    p.add_argument("--json", action="store_true", help="print the load report as JSON")
    p.set_defaults(func=run_inspect)

    p = add_command(
        subparsers,
        "export",
        help="write a checkpoint in its original or another layout",
        description="Load a checkpoint (any supported layout) and write it atomically in its original\n"
        "layout (e.g. back to the official VICReg file it was continued from) or another one,\n"
        "e.g. a backbone-only safetensors file for downstream use.",
        examples=[
            "e2mc export runs/e2mc/checkpoints/last.pt --out vicreg_e2mc.pth",
            "e2mc export runs/e2mc/checkpoints/last.pt --to safetensors --out backbone.safetensors",
            "e2mc export runs/e2mc/checkpoints/last.pt --to torchvision --out resnet50.pth",
            "e2mc export runs/w2v/checkpoints/last.pt --out wav2vec2-continued/  # an audio run: a transformers folder",
        ],
    )
    p.add_argument("checkpoint", help="checkpoint file (any supported layout) or a name (`e2mc zoo`)")
    p.add_argument("--out", required=True, help="output file (a folder for the transformers and wav2vec2 layouts)")
    p.add_argument(
        "--to",
        default="original",
        type=str.lower,
        choices=EXPORT_CHOICES,
        help="layout to write (default: the one it was loaded from)",
    )
    p.add_argument(
        "--with-optimizer",
        action="store_true",
        help="also write the optimizer state stored in the input (where the layout has one)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (refused otherwise)")
    _load_args(p)
    p.set_defaults(func=run_export)


def _load(args):
    from e2mc.models.checkpoints import load_model

    return load_model(
        args.path if hasattr(args, "path") else args.checkpoint,
        method=args.method,
        arch=args.arch,
        format=args.format,
        fresh_heads=args.fresh_heads,
    )


def run_inspect(args) -> int:
    """Print the load report (text or JSON) of a checkpoint."""
    import json

    model, report = _load(args)
    if args.json:
        d = report.to_dict()
        d["parameters"] = {
            "backbone": sum(p.numel() for p in model.backbone.parameters()),
            **{h: sum(p.numel() for p in getattr(model, h).parameters()) for h in model.head_names},
        }
        print(json.dumps(d, indent=2))
    else:
        print(report.summary())
        print(f"parameters : {sum(p.numel() for p in model.parameters()):,}")
    return 0


def run_export(args) -> int:
    """Load a checkpoint and write it in the requested layout."""
    import os

    from e2mc.errors import ConfigError
    from e2mc.models.export import export_model, resolve_target

    out = os.path.expanduser(args.out)  # a file, or a transformers folder (the wav2vec2 layout's)
    if not args.overwrite and (os.path.isfile(out) or os.path.isfile(os.path.join(out, "config.json"))):
        raise ConfigError(
            f"--out {args.out} already exists (a model you may still need: the file or folder a run started from?); "
            "choose another --out, or pass --overwrite to replace it"
        )
    model, report = _load(args)
    opt = report.optimizer_state if args.with_optimizer else None
    out = export_model(model, report, args.out, format=args.to, optimizer_state=opt)
    fmt, _, _, epoch = resolve_target(report, args.to)
    print(f"wrote {out} ({fmt} layout{'' if epoch is None else f', epoch {epoch}'}, from {report.format})")
    from e2mc.models.adapters import ADAPTERS

    named = fmt == "safetensors" or getattr(ADAPTERS.get(fmt), "names_arch", False)  # safetensors: its metadata
    if str(model.arch).startswith("timm:") and not named and not _arch_from_weights(model):
        print(
            f"note: the {fmt} layout does not record the architecture and these weights do not tell it "
            f"(a head count, say): load the file with --arch '{model.arch}'"
        )
    return 0


def _arch_from_weights(model) -> bool:
    """Whether the loader can tell ``model``'s architecture from its backbone weights alone."""
    from e2mc.errors import CheckpointError
    from e2mc.models.backbones import canonical_arch
    from e2mc.models.layouts import detect_arch

    try:
        found = detect_arch(model.backbone.state_dict())[0]
    except CheckpointError:
        return False
    return bool(found) and canonical_arch(found) == canonical_arch(str(model.arch))
