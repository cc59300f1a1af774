"""Write a model back in the layout it came from (or another), atomically.

``export_model(model, report, path)`` writes the layout of ``report.format`` (VICReg full with
``epoch``, SwAV raw ``module.*``, SimSiam ``state_dict`` with ``module.encoder.fc.*``, torchvision
backbone, Lightning, e2mc, ...), so the file drops into the user's existing pipeline.
``save_backbone_safetensors`` writes the plain backbone with metadata (arch, cifar_stem, format).

The optimizer state loaded from a checkpoint belongs to the weights *at load time*: it is only
written when passed explicitly (``optimizer_state=report.optimizer_state`` to reproduce the
original file, or the state of the optimizer that trained the exported weights). One exception:
a run that restored its source's optimiser (``optim.restore_state``) exported to the source's
layout writes its own optimiser state in the source's optimiser layout (the source's param
groups, filter functions included, and its state keys, by parameter name;
:func:`official_optimizer_state`), so the official script resumes it.
Files are written by :func:`e2mc.models.safepickle.save`: an inert stand-in read from a released
file is written back as the same global reference.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from e2mc import fileio
from e2mc.errors import CheckpointError
from e2mc.methods import METHODS
from e2mc.methods.layout import join_flat, sub
from e2mc.models import safepickle
from e2mc.models.adapters import ADAPTERS
from e2mc.models.heads import HEAD_NAMES

LAYOUT_METHODS = {layout: name for name, m in METHODS.items() for layout in m.layouts}  # official layout -> method
EXPORT_TARGETS = ("original", "safetensors", *ADAPTERS)
AUDIO_SOURCES = {"hf": "transformers", "aves": "transformers", "fairseq": "transformers"}  # what "original" writes


def model_state(model) -> tuple[dict, dict]:
    """``(backbone, heads)`` state dicts of an SSLModel, detached on the CPU."""
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    heads = {h: sub(sd, h + ".") for h in HEAD_NAMES}
    return sub(sd, "backbone."), {h: d for h, d in heads.items() if d}


def refused(path: Path, exc: Exception) -> CheckpointError | None:
    """A refused export (``fileio.atomic_write``'s ``error``) as one line: a folder at ``path``,
    permissions, a file where a folder should be, disk full."""
    if not isinstance(exc, OSError):
        return None
    if path.is_dir():
        return CheckpointError(f"{path} is a folder; give a file path to write, e.g. {path / 'model.pth'}")
    return CheckpointError(f"cannot write {path}: {exc.strerror or exc}; choose a writable file path with free space")


def _save_safetensors(tensors: dict, path, metadata: dict) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in metadata.items() if v is not None}
    return fileio.atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta), parents=True, error=refused)


def save_backbone_safetensors(model, path: str | os.PathLike, source_format: str | None = None) -> Path:
    """Plain backbone state dict in safetensors, metadata ``arch``, ``cifar_stem``, ``format``.

    Example:
        >>> save_backbone_safetensors(model, "resnet50_e2mc.safetensors")  # doctest: +SKIP
    """
    backbone, _ = model_state(model)
    meta = {
        "arch": getattr(model, "arch", None),
        "cifar_stem": bool(getattr(model, "cifar_stem", False)),
        "format": source_format or "e2mc",
        "method": getattr(model, "method", None),
    }
    return _save_safetensors(backbone, path, meta)


def official_optimizer_state(template: dict, run_state: dict, run_names: list[str]) -> dict:
    """A run's optimiser ``state_dict`` (``run_state``, its parameters named by ``run_names`` in
    order) rewritten in the layout of the source optimiser it was restored from (``template``,
    made by :func:`e2mc.train.optim.optimizer_template`): the source's param groups and positions,
    each position's buffers under the source's key names (``mu`` / ``momentum_buffer``)."""
    momentum = ("mu", "momentum_buffer")
    run_ids = [i for g in run_state["param_groups"] for i in g["params"]]
    if len(run_ids) != len(run_names):
        raise CheckpointError(
            f"the run's optimiser state has {len(run_ids)} parameters but {len(run_names)} names; "
            "export without the optimiser (--to safetensors or torchvision) or re-run the export from last.pt"
        )
    by_name = {n: run_state["state"].get(i, {}) for n, i in zip(run_names, run_ids)}
    groups = safepickle.from_plain(template["param_groups"])
    positions = [i for g in groups for i in g.get("params", [])]
    state = {}
    for pos, name, keys in zip(positions, template["names"], template["state_keys"]):
        run = by_name.get(name) or {}
        entry = {}
        for k in keys:
            if k in run:
                entry[k] = run[k]
            elif k in momentum and any(m in run for m in momentum):
                entry[k] = next(run[m] for m in momentum if m in run)
        if entry:
            state[pos] = entry
    return {"state": state, "param_groups": groups}


def resolve_target(
    report, format: str | None = None, epoch: int | None = None
) -> tuple[str, str | None, dict, int | None]:
    """``(format, source format, source layout, epoch)`` that ``export_model`` writes for ``format``.

    ``None``/``"original"`` is the layout the model was loaded from; for an e2mc run checkpoint it
    is the layout the run was continued from (a VICReg ``resnet50_fullckpt.pth`` comes back as
    one), with ``epoch`` = the source's epoch + the epochs run. ``e2mc`` when nothing is known.
    """
    source = getattr(report, "format", None)
    layout = dict(getattr(report, "layout", None) or {})
    fmt = format or "original"
    origin = layout.get("source_format") if source == "e2mc" else None
    if origin in ("random", "e2mc", "safetensors"):
        origin = None  # nothing to go back to (a safetensors source keeps its own metadata)
    if fmt == "original":
        fmt = origin or (source if source and source != "random" else "e2mc")
        fmt = AUDIO_SOURCES.get(fmt, fmt)  # an audio encoder goes back as a transformers folder
    if origin and fmt != "e2mc":  # leaving a run checkpoint for a published layout
        done, before = getattr(report, "epoch", None), layout.get("source_epoch")
        if epoch is None and done is not None and before is not None:
            epoch = int(before) + int(done)
        if fmt == origin:
            source, layout = origin, dict(layout.get("source_layout") or {})
    return fmt, source, layout, epoch


def export_model(
    model,
    report=None,
    path: str | os.PathLike = "model.pt",
    format: str | None = None,
    *,
    epoch: int | None = None,
    optimizer_state: Any = None,
) -> Path:
    """Write ``model`` to ``path`` in a checkpoint layout; returns the path.

    Args:
        model: an :class:`~e2mc.models.model.SSLModel`.
        report: the :class:`~e2mc.models.checkpoints.LoadReport` it was loaded with (gives the
            original layout, epoch, ...); ``None`` for a model built from scratch.
        format: ``None``/``"original"`` (the layout it was loaded from; for an e2mc run checkpoint,
            the layout the run was continued from, with epoch = source epoch + epochs run;
            ``e2mc`` when unknown),
            ``"safetensors"`` (backbone only) or an adapter name: ``vicreg``, ``swav``,
            ``simsiam``, ``torchvision``, ``timm``, ``lightning``, ``e2mc``, ``state_dict``.
        epoch: epoch to store (default: the loaded one).
        optimizer_state: written where the layout has an optimizer (default: none written).
    """
    if not hasattr(model, "backbone"):  # a path or a name: the file is read first
        raise CheckpointError(
            f"export_model takes a loaded model, not {type(model).__name__} {str(model)[:80]!r}: "
            "model, report = e2mc.load_model(path); e2mc.export_model(model, report, out) (CLI: e2mc export)"
        )
    run_layout = dict(getattr(report, "layout", None) or {})
    fmt, source, layout, epoch = resolve_target(report, format, epoch)
    template = layout.get("optimizer") if getattr(report, "format", None) == "e2mc" and source == fmt else None
    if template and (optimizer_state is None or optimizer_state is getattr(report, "optimizer_state", None)):
        if report.optimizer_state is not None and run_layout.get("optimizer_params"):
            optimizer_state = official_optimizer_state(template, report.optimizer_state, run_layout["optimizer_params"])
    if fmt == "safetensors":
        if format in (None, "original") and layout.get("kind") not in (None, "backbone"):
            backbone, heads = model_state(model)
            meta = {"arch": model.arch, "cifar_stem": model.cifar_stem, "format": layout.get("source_format")}
            return _save_safetensors(join_flat(backbone, heads, layout), path, meta)
        return save_backbone_safetensors(model, path, source_format=layout.get("source_format") or source)
    if fmt not in ADAPTERS:
        raise CheckpointError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_TARGETS)}")
    from e2mc.models.audio import AudioEncoder

    audio = isinstance(model.backbone, AudioEncoder)
    if audio and not ADAPTERS[fmt].holds_audio:
        raise CheckpointError(
            f"the {fmt} layout holds image networks; this is an audio encoder ({model.arch}): export --to "
            "transformers (a save_pretrained folder of its own class), safetensors or e2mc"
        )
    wants = LAYOUT_METHODS.get(fmt)
    if wants and model.method not in (None, wants):
        if audio:  # the wav2vec2 layout: Wav2Vec2ForPreTraining, quantizer included
            raise CheckpointError(
                f"the {fmt} layout is a Wav2Vec2ForPreTraining folder: it needs the quantizer of a --method {wants} "
                f"run, and this is a {model.method} run; export --to transformers for the encoder (its own class), "
                "or e2mc for everything"
            )
        raise CheckpointError(
            f"the model has {model.method} heads; the {fmt} layout holds {wants} heads. Export to "
            + "".join(f"{lay} (its own), " for lay, m in LAYOUT_METHODS.items() if m == model.method)
            + "torchvision or safetensors for the backbone alone, or "
            "e2mc for everything (--to NAME; format='NAME' in Python)"
        )
    backbone, heads = model_state(model)
    meta = {
        "method": model.method,
        "arch": model.arch,
        "cifar_stem": model.cifar_stem,
        "head_sizes": model.head_sizes,
        "optimizer": optimizer_state,
        "source_format": source,
        "epoch": epoch if epoch is not None else getattr(report, "epoch", None),
        "layout": layout if source == fmt else None,
        "method_state": getattr(report, "method_state", None),  # e.g. DINO's centre
        "encoder": model.backbone,  # what a layout of the network itself reads (transformers' config)
    }
    obj = ADAPTERS[fmt].pack(backbone, heads, meta)
    written = ADAPTERS[fmt].save(obj, Path(path), refused)  # a layout of its own (a folder), or None
    if written is not None:
        return written
    return fileio.atomic_write(path, lambda tmp: safepickle.save(obj, tmp), parents=True, error=refused)
