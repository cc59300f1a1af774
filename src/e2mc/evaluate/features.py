"""Frozen-feature extraction with an on-disk cache.

``extract_features`` runs a model in eval mode without gradients over a dataset of
``(uint8 (3, H, W), label)`` items, applies the evaluation transform before the model, and
returns float32 features per requested output (``"backbone"``: pooled ``model.embed(x)``;
``"projector"``: ``model.projector`` applied to those). Results are cached as safetensors under
``cache_dir`` (default ``$E2MC_CACHE/features`` or ``~/.cache/e2mc/features``), keyed by the
checkpoint's sha256 (file bytes, streamed; the state dict's bytes for an in-memory model), the
dataset identity (name, split, size, image size), the transform and ``which``. Entries are
written atomically (temp file + ``os.replace``), and only after a successful, finite extraction.
An entry that cannot be read or does not hold finite ``(N, D)`` features of every requested output
and ``(N,)`` labels is reported in one warning line, deleted and recomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from e2mc.errors import DataError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class FeatureSet:
    """Features per output name (float32 (N, D)) and int64 labels (N,)."""

    features: dict[str, torch.Tensor]
    labels: torch.Tensor
    key: str = ""
    meta: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.features[name]


def default_cache_dir() -> Path:
    """``$E2MC_CACHE/features`` if set, else ``~/.cache/e2mc/features``."""
    root = os.environ.get("E2MC_CACHE")
    return Path(root) / "features" if root else Path.home() / ".cache" / "e2mc" / "features"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def state_dict_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and bytes, in key order)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def dataset_identity(dataset) -> dict:
    """What identifies a dataset for the cache: name, split, size and image size (from ``.info``),
    and a digest of its class names and labels (cached labels can never disagree with the dataset's)."""
    info = getattr(dataset, "info", None)
    ident = {
        "name": str(getattr(info, "name", type(dataset).__name__)),
        "split": str(getattr(info, "split", "")),
        "n": len(dataset),
        "image_size": getattr(info, "image_size", None),
    }
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        labels = torch.as_tensor(targets, device="cpu").long() if not torch.is_tensor(targets) else targets.cpu().long()
        h = hashlib.sha256(json.dumps([str(c) for c in getattr(dataset, "classes", None) or []]).encode())
        h.update(labels.contiguous().numpy().tobytes())
        ident["labels"] = h.hexdigest()[:16]
    return ident


def default_transform(dataset) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """The evaluation transform for ``dataset`` and a string naming it (for the cache key).

    Uses ``e2mc.data.views.eval_transform(batch, dataset.info)`` when available; otherwise scales
    uint8 to [0, 1] and normalises with ``info.mean/std`` (ImageNet statistics without ``info``).
    """
    info = getattr(dataset, "info", None)
    try:
        from e2mc.data.views import eval_transform
    except ImportError:
        eval_transform = None
    if eval_transform is not None and info is not None:
        size = getattr(info, "image_size", None)
        desc = f"eval_transform(size={size},mean={info.mean},std={info.std})"
        return (lambda b: eval_transform(b, info, image_size=size)), desc
    mean = tuple(getattr(info, "mean", IMAGENET_MEAN))
    std = tuple(getattr(info, "std", IMAGENET_STD))

    def scale(batch: torch.Tensor) -> torch.Tensor:
        m = torch.tensor(mean, device=batch.device).view(1, -1, 1, 1)
        s = torch.tensor(std, device=batch.device).view(1, -1, 1, 1)
        return (batch.float() / 255.0 - m) / s

    return scale, f"scale(mean={mean},std={std})"


def _resolve_amp(amp_dtype, device: torch.device):
    if amp_dtype is None:
        return torch.bfloat16 if device.type == "cuda" else None
    if isinstance(amp_dtype, str):
        amp_dtype = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                     "float16": torch.float16, "fp32": None, "float32": None, "none": None}.get(amp_dtype.lower(), "?")
        if amp_dtype == "?":
            raise DataError("amp_dtype must be one of bf16, fp16, fp32 (or a torch dtype / None)")
    return None if amp_dtype == torch.float32 else amp_dtype


def _forward(model, x: torch.Tensor, which: Sequence[str]) -> dict[str, torch.Tensor]:
    feats = model.embed(x) if hasattr(model, "embed") else model(x)
    out = {"backbone": feats}
    if "projector" in which:
        out["projector"] = model.projector(feats)
    return {k: out[k] for k in which}


@torch.no_grad()
def extract_features(
    model,
    dataset,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    which: Sequence[str] = ("backbone",),
    amp_dtype=None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    cache_key_parts: Sequence[str] = (),
    num_workers: int = 0,
    model_hash: str | None = None,
) -> FeatureSet:
    """Extract frozen features of ``dataset`` with ``model`` (an ``SSLModel`` or a checkpoint path).

    Args:
        which: outputs to keep, from ``("backbone", "projector")``.
        amp_dtype: autocast dtype; None = bf16 on CUDA, float32 on CPU. Pass ``torch.bfloat16``
            (or ``"bf16"``) to use bf16 autocast on CPU. Features are returned in float32.
        transform: batch transform uint8 -> normalised float; default :func:`default_transform`.
        cache_dir / use_cache: where and whether to cache; ``cache_key_parts`` adds strings to the key.
        model_hash: the model's identity for the cache key when passing an in-memory model that was
            loaded from a file (e.g. :func:`file_sha256` of it); default: hash of the state dict.

    Raises:
        DataError: extraction failed or gave non-finite features (no cache entry is written).
    """
    which = tuple(which)
    if not which or any(w not in ("backbone", "projector") for w in which):
        raise DataError(f"features: which must be a subset of ('backbone', 'projector'), got {which}")
    device = torch.device(device)
    ckpt_hash = model_hash
    if isinstance(model, (str, os.PathLike)):
        from e2mc.models.checkpoints import load_model

        ckpt_hash = file_sha256(model)
        model = load_model(str(model))[0]
    if ckpt_hash is None:
        ckpt_hash = state_dict_sha256(model)
    if "projector" in which and getattr(model, "projector", None) is None:
        raise DataError("features: 'projector' requested but the model has no projector; use which=('backbone',)")
    if transform is None:
        transform, tdesc = default_transform(dataset)
    else:
        tdesc = getattr(transform, "__qualname__", repr(transform))
    amp = _resolve_amp(amp_dtype, device)
    key_obj = {"model": ckpt_hash, "data": dataset_identity(dataset), "transform": tdesc, "which": list(which),
               "amp": str(amp), "extra": [str(p) for p in cache_key_parts]}
    key = hashlib.sha256(json.dumps(key_obj, sort_keys=True, default=str).encode()).hexdigest()[:32]
    cache_path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = cache_path / f"{key}.safetensors"
    if use_cache and entry.exists():
        cached = _load_entry(entry, which, len(dataset))
        if cached is not None:
            return FeatureSet(cached[0], cached[1], key, {**key_obj, "cached": True})

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = model.training
    model.eval().to(device)
    chunks: dict[str, list[torch.Tensor]] = {w: [] for w in which}
    labels = []
    i = 0
    try:
        for i, (images, target) in enumerate(loader):
            x = transform(images.to(device, non_blocking=True))
            with torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None):
                out = _forward(model, x, which)
            for w in which:
                chunks[w].append(out[w].float().flatten(1).cpu())
            labels.append(torch.as_tensor(target).long().cpu())
    except DataError:
        raise
    except Exception as exc:  # anything the model/data raise becomes a user-facing error
        raise DataError(f"feature extraction failed at batch {i}: {exc}; "
                        "check that the images match the model (size, channels) and the checkpoint loads") from exc
    finally:
        model.train(was_training)
    if not labels:
        raise DataError("feature extraction: the dataset is empty; check the dataset path and split")
    feats = {w: torch.cat(chunks[w]) for w in which}
    for w, f in feats.items():
        if not torch.isfinite(f).all():
            bad = int((~torch.isfinite(f)).any(dim=1).sum())
            raise DataError(f"feature extraction: {bad} samples have NaN/inf {w} features; the checkpoint may be "
                            "broken or diverged, or try amp_dtype='fp32'. Nothing was cached.")
    fs = FeatureSet(feats, torch.cat(labels), key, {**key_obj, "cached": False})
    if use_cache:
        _save_atomic(entry, fs)
    return fs


def _load_entry(entry: Path, which: Sequence[str], n: int):
    """``(features, labels)`` of a cache entry, or None after deleting an unreadable or incomplete one
    (truncated, garbage, an output or the labels missing, wrong shapes, non-finite): it is recomputed."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(entry))
        labels = tensors.get("__labels__")
        if labels is None or labels.dtype != torch.int64 or tuple(labels.shape) != (n,):
            raise ValueError(f"labels missing or not ({n},) int64")
        for w in which:
            f = tensors.get(w)
            if f is None:
                raise ValueError(f"no {w!r} features")
            if f.dtype != torch.float32 or f.dim() != 2 or f.shape[0] != n or not torch.isfinite(f).all():
                raise ValueError(f"{w!r} features are not finite float32 ({n}, D) but {f.dtype} {tuple(f.shape)}")
        feats = {w: tensors[w] for w in which}
    except Exception as exc:  # safetensors raises its own error type for truncated/garbage files
        reason = str(exc).splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        log.warning("feature cache entry %s is unreadable or incomplete (%s); deleting it and recomputing",
                    entry, reason)
        with contextlib.suppress(OSError):
            entry.unlink()
        return None
    return feats, labels


def _save_atomic(entry: Path, fs: FeatureSet) -> None:
    """Write a cache entry atomically (``models.export.atomic_write``); a failed write only warns (the
    cache is an optimisation: the features are still returned)."""
    from safetensors.torch import save_file

    from e2mc.errors import CheckpointError
    from e2mc.models.export import atomic_write

    tensors = {**{k: v.contiguous() for k, v in fs.features.items()}, "__labels__": fs.labels.contiguous()}
    try:
        atomic_write(entry, lambda tmp: save_file(tensors, tmp))
    except CheckpointError as exc:  # atomic_write's one-line form of an OSError
        log.warning("could not write the feature cache entry %s (%s); continuing without caching it", entry, exc)
