"""Frozen-feature extraction with an on-disk, memory-mapped, resumable cache.

``extract_features`` runs a model in eval mode without gradients over a dataset of
``(uint8 (3, H, W), label)`` items, applies the evaluation transform before the model, and
returns features per requested output (``"backbone"``: pooled ``model.embed(x)``;
``"projector"``: ``model.projector`` applied to those) stored as ``cache_dtype`` (default float16;
the same dtype with and without the cache, so results never depend on a cache hit).

Cache: one folder per entry under ``cache_dir`` (default ``$E2MC_CACHE/features`` or
``~/.cache/e2mc/features``), named by a key over the checkpoint's sha256 (file bytes, streamed; the
state dict's bytes for an in-memory model), the dataset identity (name, split, size, image size,
class names and labels), the transform, ``which``, the autocast and storage dtypes. It holds one
``.npy`` per output (``(N, D)``) and ``labels.npy`` (``(N,)`` int64), allocated whole once the
first batch gives D (after checking the free disk space), filled batch by batch through
``numpy`` memory maps, and ``progress.json`` (rows written, ``complete``), rewritten atomically
after the maps are flushed (msync) at most every ``PROGRESS_SECONDS`` and when extraction stops.
An interrupted extraction (an exception, Ctrl-C, a kill) continues from the recorded rows on the
next call. A lock file per entry (``flock``) lets one process at a time extract or read it (a
second one waits and then reads the result). A complete entry is returned memory-mapped (copy-on-write: never copied whole into
memory, never modified on disk). An entry that cannot be read or does not hold finite features of
the recorded shapes is reported in one warning line, deleted and recomputed. Non-finite features
are an error (the entry is deleted: they would come back). Intermediate layers
(:mod:`e2mc.evaluation.layerfeatures`) use the same entries, their key adding the layer and its
pooling; the backbone's output keeps this key.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from e2mc.data.datasets import IMAGENET_MEAN, IMAGENET_STD
from e2mc.errors import DataError, OutOfMemory, is_out_of_memory
from e2mc.fileio import cache_root

log = logging.getLogger(__name__)

CACHE_DTYPES = {"float16": np.float16, "float32": np.float32}
PROGRESS_SECONDS = 30.0  # how often (at most) a running extraction records its progress
FORMAT = 2  # progress.json format (1 was one safetensors file per entry)


@dataclass
class FeatureSet:
    """Features per output name ((N, D), the cache dtype; memory-mapped when read from the cache)
    and int64 labels (N,)."""

    features: dict[str, torch.Tensor]
    labels: torch.Tensor
    key: str = ""
    meta: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.features[name]


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
        amp_dtype = {
            "bf16": torch.bfloat16,
            "bfloat16": torch.bfloat16,
            "fp16": torch.float16,
            "float16": torch.float16,
            "fp32": None,
            "float32": None,
            "none": None,
        }.get(amp_dtype.lower(), "?")
        if amp_dtype == "?":
            raise DataError("amp_dtype must be one of bf16, fp16, fp32 (or a torch dtype / None)")
    return None if amp_dtype == torch.float32 else amp_dtype


def _forward(model, x: torch.Tensor, which: Sequence[str]) -> dict[str, torch.Tensor]:
    feats = model.embed(x) if hasattr(model, "embed") else model(x)
    out = {"backbone": feats}
    if "projector" in which:
        from e2mc.models.model import head_embedding

        out["projector"] = head_embedding(model, feats)
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
    cache_dtype: str = "float16",
) -> FeatureSet:
    """Extract frozen features of ``dataset`` with ``model`` (an ``SSLModel`` or a checkpoint path).

    Args:
        which: outputs to keep, from ``("backbone", "projector")``.
        amp_dtype: autocast dtype; None = bf16 on CUDA, float32 on CPU. Pass ``torch.bfloat16``
            (or ``"bf16"``) to use bf16 autocast on CPU.
        transform: batch transform uint8 -> normalised float; default :func:`default_transform`.
        cache_dir / use_cache: where and whether to cache (without the cache the features are held
            in memory); ``cache_key_parts`` adds strings to the key.
        model_hash: the model's identity for the cache key when passing an in-memory model that was
            loaded from a file (e.g. :func:`file_sha256` of it); default: hash of the state dict.
        cache_dtype: ``"float16"`` (default; half the disk and memory) or ``"float32"``: the dtype
            the features are stored and returned in, with or without the cache.

    Raises:
        DataError: extraction failed, gave non-finite features (or beyond float16's range), or
            the cache's disk lacks the space for the entry.
    """
    which = tuple(which)
    device = torch.device(device)
    model, transform, amp, key_obj = prepare(
        model, dataset, which, model_hash, transform, amp_dtype, device, cache_dtype, cache_key_parts
    )
    key = cache_key(key_obj)
    n = len(dataset)
    entry = entry_path(cache_dir, key)
    with contextlib.ExitStack() as stack:  # the entry's lock, held until the features are returned
        use_cache = use_cache and _lock(stack, entry)
        sink = _Entry.open(entry, which, n, cache_dtype) if use_cache else None
        if sink is not None and sink.complete:
            feats, labels = sink.result()
            return FeatureSet(feats, labels, key, {**key_obj, "cached": True, "resumed_from": None})
        start = sink.rows if sink is not None else 0

        def allocate(dims: dict[str, int]) -> _Entry | _Memory:  # once the first batch gives the feature dims
            return (_Entry.create(entry, which, dims, n, cache_dtype) if use_cache else None) or _Memory(
                dims, n, cache_dtype
            )

        data = dataset if start == 0 else torch.utils.data.Subset(dataset, range(start, n))
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        embed = functools.partial(_embed, model, transform=transform, which=which, device=device, amp=amp)
        was_training = model.training
        model.eval().to(device)
        try:
            sink = _fill(loader, embed, sink, allocate, start, n, cache_dtype)
        finally:
            model.train(was_training)
        feats, labels = sink.result()
        return FeatureSet(feats, labels, key, {**key_obj, "cached": False, "resumed_from": start or None})


def prepare(model, dataset, which, model_hash, transform, amp_dtype, device, cache_dtype, cache_key_parts):
    """Checked arguments of an extraction: (model, transform, autocast dtype, cache key object)."""
    if not which or any(w not in ("backbone", "projector") for w in which):
        raise DataError(f"features: which must be a subset of ('backbone', 'projector'), got {which}")
    if cache_dtype not in CACHE_DTYPES:
        raise DataError(f"features: cache_dtype must be one of {', '.join(CACHE_DTYPES)}, got {cache_dtype!r}")
    model, ckpt_hash = _model_and_hash(model, model_hash, which)
    if transform is None:
        transform, tdesc = default_transform(dataset)
    else:
        tdesc = getattr(transform, "__qualname__", repr(transform))
    amp = _resolve_amp(amp_dtype, device)
    key_obj = {
        "model": ckpt_hash,
        "data": dataset_identity(dataset),
        "transform": tdesc,
        "which": list(which),
        "amp": str(amp),
        "store": cache_dtype,
        "extra": [str(p) for p in cache_key_parts],
    }
    if len(dataset) == 0:
        raise DataError("feature extraction: the dataset is empty; check the dataset path and split")
    return model, transform, amp, key_obj


def cache_key(key_obj: dict) -> str:
    """The entry's folder name: a digest of what identifies the features."""
    return hashlib.sha256(json.dumps(key_obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


def entry_path(cache_dir, key: str) -> Path:
    return (Path(cache_dir) if cache_dir is not None else cache_root() / "features") / key


def _model_and_hash(model, model_hash: str | None, which: tuple[str, ...]):
    """The model (loaded when given a checkpoint path) and its identity for the cache key: the file's
    sha256 for a path, else ``model_hash``, else the hash of its state dict."""
    if isinstance(model, (str, os.PathLike)):
        from e2mc.models.checkpoints import load_model

        model_hash = file_sha256(model)
        model = load_model(str(model))[0]
    if model_hash is None:
        model_hash = state_dict_sha256(model)
    from e2mc.models.model import has_head_embedding

    if "projector" in which and not has_head_embedding(model):
        raise DataError("features: 'projector' requested but the model has no projector; use which=('backbone',)")
    return model, model_hash


def _embed(model, images: torch.Tensor, *, transform, which, device: torch.device, amp) -> dict[str, torch.Tensor]:
    """One batch's features per output: float32, on the CPU, flattened to (B, D)."""
    x = transform(images.to(device, non_blocking=True))
    with torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None):
        out = _forward(model, x, which)
    return {w: out[w].float().flatten(1).cpu() for w in which}


def _fill(loader, embed, sink, allocate, start: int, n: int, dtype: str):
    """Write the features (``embed(images)``) and labels of ``loader``'s batches (rows ``start`` to ``n``)
    into ``sink`` (``allocate(dims)`` makes it at the first batch when there is none yet), recording the
    progress at most every ``PROGRESS_SECONDS`` and when extraction stops; the sink, complete. On a
    failure the rows written stay recorded (a cache entry resumes from them), except for bad features,
    which delete the entry."""
    rows, i, t_rec = start, 0, time.monotonic()
    try:
        for i, (images, target) in enumerate(loader):  # noqa: B007 (i names a failed batch)
            out = embed(images)
            _check_batch(out, rows, dtype)
            if sink is None:
                sink = allocate({w: f.shape[1] for w, f in out.items()})
            sink.write(rows, out, torch.as_tensor(target).long().cpu())
            rows += len(target)
            if time.monotonic() - t_rec >= PROGRESS_SECONDS:
                sink.record(rows)
                t_rec = time.monotonic()
    except _BadFeatures:
        if getattr(sink, "on_disk", False):
            sink.delete()  # deterministic: a resumed extraction would meet them again
        raise
    except BaseException as exc:  # Ctrl-C, a data or model error: keep the rows written for the next call
        if sink is not None and rows > start:
            sink.record(rows)
        if isinstance(exc, DataError) or not isinstance(exc, Exception):
            raise
        kept = (
            f"; the {rows} rows extracted are cached and the next call continues from there"
            if (getattr(sink, "on_disk", False) and rows)
            else ""
        )
        if is_out_of_memory(exc):
            b = getattr(loader, "batch_size", None) or 2
            raise OutOfMemory(
                f"out of memory at batch size {b} while extracting features (batch {i}): lower the batch "
                f"size (e2mc evaluate --batch-size {max(b // 2, 1)}, or batch_size={max(b // 2, 1)} in Python){kept}"
            ) from exc
        raise DataError(
            f"feature extraction failed at batch {i} (row {rows}): {exc}; check that the images match "
            f"the model (size, channels) and the checkpoint loads{kept}"
        ) from exc
    if rows != n:
        raise DataError(f"feature extraction: the dataset gave {rows} samples but has length {n}; check the dataset")
    sink.record(rows, complete=True)
    return sink


class _BadFeatures(DataError):
    """Non-finite features, or features beyond the cache dtype's range."""


BadFeatures = _BadFeatures  # public: the tune records a probe whose features overflow as diverged


def _check_batch(out: dict[str, torch.Tensor], first_row: int, dtype: str) -> None:
    for w, f in out.items():
        bad = ~torch.isfinite(f).all(dim=1)
        if bool(bad.any()):
            raise _BadFeatures(
                f"feature extraction: {int(bad.sum())} samples (the first: row "
                f"{first_row + int(bad.nonzero()[0])}) have NaN/inf {w} features; the checkpoint may "
                "be broken or diverged, or try amp_dtype='fp32'. Nothing was cached."
            )
        top = float(f.abs().max()) if f.numel() else 0.0
        if dtype == "float16" and top > float(np.finfo(np.float16).max):
            raise _BadFeatures(
                f"feature extraction: {w} features reach {top:.3g}, beyond float16's range (65504); "
                "store them as float32 (cache_dtype='float32'; CLI: --feature-dtype float32)"
            )


def _lock(stack: contextlib.ExitStack, entry: Path) -> bool:
    """Hold an exclusive lock (``<entry>.lock``, released by the OS if the process dies) while this
    process reads or extracts ``entry``: two processes never write one entry, and the second one
    reads the first one's result. False, with a warning, when the cache folder cannot be written."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return True
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(entry.parent / f"{entry.name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        log.warning("could not write the feature cache entry %s (%s); continuing without caching it", entry, exc)
        return False
    stack.callback(os.close, fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.warning("another process is extracting these features into %s; waiting for it to finish", entry)
        fcntl.flock(fd, fcntl.LOCK_EX)
    return True


def _gib(b: float) -> str:
    return f"{b / 2**30:.1f} GiB"


class _Memory:
    """Features held in memory (``use_cache=False``, or a cache folder that cannot be written)."""

    def __init__(self, dims: dict[str, int], n: int, dtype: str):
        tdt = torch.float16 if dtype == "float16" else torch.float32
        self.features = {w: torch.empty(n, d, dtype=tdt) for w, d in dims.items()}
        self.labels = torch.empty(n, dtype=torch.int64)

    def write(self, s: int, out: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        for w, f in out.items():
            self.features[w][s : s + len(f)] = f
        self.labels[s : s + len(labels)] = labels

    def record(self, rows: int, complete: bool = False) -> None:
        pass

    def result(self):
        return self.features, self.labels


class _Entry:
    """A cache entry folder: ``<output>.npy`` memory maps, ``labels.npy`` and ``progress.json``."""

    on_disk = True

    def __init__(self, path: Path, maps: dict, labels, rows: int, complete: bool, progress: dict):
        self.path, self.maps, self.labels, self.rows, self.complete = path, maps, labels, rows, complete
        self.progress = progress

    @classmethod
    def create(cls, path: Path, which, dims: dict[str, int], n: int, dtype: str) -> "_Entry | None":
        """Allocate a new entry (after checking the free space); None (with a warning) when the
        folder cannot be written: the caller keeps the features in memory."""
        need = n * (sum(dims.values()) * np.dtype(CACHE_DTYPES[dtype]).itemsize + 8)
        try:
            path.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(path).free
        except OSError as exc:
            log.warning("could not write the feature cache entry %s (%s); continuing without caching it", path, exc)
            return None
        space = DataError(
            f"feature cache: the features need {_gib(need)} but {path.parent} has {_gib(free)} free; "
            "free some space, pass another cache folder (--cache-dir) or --no-cache (use_cache=False)"
        )
        if need > free:
            shutil.rmtree(path, ignore_errors=True)
            raise space
        progress = {"format": FORMAT, "n": n, "which": list(which), "dims": dims, "dtype": dtype}
        try:
            maps = {
                w: np.lib.format.open_memmap(path / f"{w}.npy", mode="w+", dtype=CACHE_DTYPES[dtype], shape=(n, d))
                for w, d in dims.items()
            }
            labels = np.lib.format.open_memmap(path / "labels.npy", mode="w+", dtype=np.int64, shape=(n,))
            for name in (*dims, "labels"):
                _reserve(path / f"{name}.npy")
            entry = cls(path, maps, labels, 0, False, progress)
            entry.record(0, strict=True)
        except OSError as exc:
            shutil.rmtree(path, ignore_errors=True)
            if exc.errno == errno.ENOSPC:
                raise space from None
            log.warning("could not write the feature cache entry %s (%s); continuing without caching it", path, exc)
            return None
        return entry

    @classmethod
    def open(cls, path: Path, which, n: int, dtype: str) -> "_Entry | None":
        """The entry at ``path`` (complete, or partial to resume), or None when there is none; an
        unreadable or inconsistent one is reported in one warning line and deleted."""
        if not path.exists():
            return None
        from e2mc.evaluation.knn import all_finite

        try:
            progress = json.loads((path / "progress.json").read_text())
            if (progress.get("format"), progress.get("n"), progress.get("which"), progress.get("dtype")) != (
                FORMAT,
                n,
                list(which),
                dtype,
            ):
                raise ValueError("progress.json does not describe this extraction")
            rows, complete = int(progress["rows"]), bool(progress["complete"])
            if not 0 <= rows <= n or (complete and rows != n):
                raise ValueError(f"progress.json records {rows} rows of {n}")
            mode = "c" if complete else "r+"  # copy-on-write: users' in-place edits never reach the file
            maps = {}
            for w in which:
                a = np.load(path / f"{w}.npy", mmap_mode=mode)
                if a.dtype != CACHE_DTYPES[dtype] or a.shape != (n, int(progress["dims"][w])):
                    raise ValueError(f"{w!r} features are not {dtype} ({n}, D) but {a.dtype} {a.shape}")
                if not all_finite(torch.from_numpy(a[:rows])):
                    raise ValueError(f"{w!r} features are not finite")
                maps[w] = a
            labels = np.load(path / "labels.npy", mmap_mode=mode)
            if labels.dtype != np.int64 or labels.shape != (n,):
                raise ValueError(f"labels are not ({n},) int64 but {labels.dtype} {labels.shape}")
        except Exception as exc:  # missing, truncated or garbage files, bad JSON, wrong shapes
            reason = str(exc).splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            log.warning(
                "feature cache entry %s is unreadable or incomplete (%s); deleting it and recomputing", path, reason
            )
            shutil.rmtree(path, ignore_errors=True)
            return None
        if not complete:
            log.info("feature cache entry %s: continuing an interrupted extraction at row %d of %d", path, rows, n)
        return cls(path, maps, labels, rows, complete, progress)

    def write(self, s: int, out: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        for w, f in out.items():
            self.maps[w][s : s + len(f)] = f.numpy()
        self.labels[s : s + len(labels)] = labels.numpy()

    def record(self, rows: int, complete: bool = False, strict: bool = False) -> None:
        """Flush the maps (msync: the rows reach the disk first), then rewrite progress.json
        atomically; a failed write only warns (the extraction goes on, less resumable)."""
        from e2mc.errors import CheckpointError
        from e2mc.fileio import atomic_write_text
        from e2mc.models.export import refused

        for a in (*self.maps.values(), self.labels):
            a.flush()
        text = json.dumps({**self.progress, "rows": int(rows), "complete": bool(complete)})
        try:
            atomic_write_text(self.path / "progress.json", text, parents=True, error=refused)
        except CheckpointError as exc:
            if strict:
                raise OSError(str(exc)) from None
            log.warning("could not record the feature cache progress in %s (%s)", self.path, exc)
            return
        self.rows, self.complete = int(rows), bool(complete)

    def delete(self) -> None:
        self.maps = {}
        shutil.rmtree(self.path, ignore_errors=True)

    def result(self):
        """Features memory-mapped copy-on-write (the file never changes) and labels in memory."""
        self.maps = {
            w: a if a.mode == "c" else np.load(self.path / f"{w}.npy", mmap_mode="c") for w, a in self.maps.items()
        }
        feats = {w: torch.from_numpy(a) for w, a in self.maps.items()}
        return feats, torch.from_numpy(np.array(self.labels))


def _reserve(path: Path) -> None:
    """Reserve the file's blocks now (a full disk fails here with ENOSPC, not with SIGBUS on a
    later write to the memory map); skipped where the file system does not support it."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise
    finally:
        os.close(fd)
