"""Load any supported checkpoint (or a hub name) into an :class:`SSLModel`, with a report.

Safety: files are read with ``torch.load(..., map_location="cpu", weights_only=True)`` (a
pickle that would run code is refused) or with safetensors. Loading is all-or-nothing: the model
is built, every key and shape is checked, then ``load_state_dict(strict=True)`` runs once.

Method mismatch policy: asking for ``method="swav"`` on a SimSiam checkpoint raises a
CheckpointError, unless ``fresh_heads=True``: then the checkpoint's heads are dropped (listed in
``report.dropped``) and the requested method's heads are built fresh (``report.heads_built``).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from e2mc.errors import CheckpointError, ConfigError
from e2mc.methods import METHODS
from e2mc.methods.adapter import Parts
from e2mc.models import safepickle, zoo
from e2mc.models.adapters import ADAPTERS
from e2mc.models.audio import is_audio_arch, is_hf_folder
from e2mc.models.backbones import canonical_arch
from e2mc.models.fairseq import looks_like as is_fairseq_file
from e2mc.models.heads import TEACHER_SLOTS
from e2mc.models.layouts import CLASSIFIER_PREFIXES, detect_arch, infer_head_sizes
from e2mc.models.model import SSLModel

WARMUP_NOTE = "warm up heads with the backbone frozen before continued training"
NAME_PREFIXES = ("random:", "torchvision:", "timm:", "hf:", "aves:", "fairseq:")


@dataclass
class LoadReport:
    """What :func:`load_model` found and did.

    ``missing``: model keys absent from the file that were filled (e.g. ``num_batches_tracked``;
    fresh heads are listed in ``heads_built`` instead). ``unexpected``: file keys the model has no
    place for (always also in ``dropped``). ``stand_ins``: the pickled globals that were read as
    inert stand-ins or data-only values (:mod:`e2mc.models.safepickle`). ``optimizer_state`` (not in
    :meth:`to_dict`): the optimizer state stored in the file, for training to reuse if it wants.
    ``source``: for a name (zoo, torchvision, timm), where its weights came from: ``name``, ``url``,
    ``cache_path``, ``sha256``, ``size``. ``heads`` are the method's heads read from the file; its
    momentum teachers (``Method.teacher`` slots) are ``teachers``: ``{slot: {"tensors": n,
    "loaded": True (from the file) / False (a copy of the online network)}}``.
    """

    path: str
    format: str
    arch: str | None = None
    method: str | None = None
    cifar_stem: bool = False
    heads: list = field(default_factory=list)
    heads_built: list = field(default_factory=list)
    teachers: dict = field(default_factory=dict)
    head_sizes: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    shape_mismatches: list = field(default_factory=list)
    dropped: list = field(default_factory=list)
    epoch: int | None = None
    notes: list = field(default_factory=list)
    layout: dict = field(default_factory=dict)
    stand_ins: list = field(default_factory=list)
    source: dict = field(default_factory=dict)
    optimizer_state: Any = field(default=None, repr=False)
    method_state: Any = field(default=None, repr=False)  # the method's own state in the file (DINO's centre)

    def to_dict(self) -> dict:
        """JSON-ready dict (without the optimizer and method states; ``has_optimizer_state``,
        ``has_method_state`` instead)."""
        d = asdict(self)
        d.pop("optimizer_state")
        d.pop("method_state")
        d["has_optimizer_state"] = self.optimizer_state is not None
        d["has_method_state"] = self.method_state is not None
        d["shape_mismatches"] = [[k, list(a), list(b)] for k, a, b in self.shape_mismatches]
        return json.loads(json.dumps(d, default=str))

    def summary(self) -> str:
        """Human-readable multi-line text."""

        def few(xs, n=5):
            return ", ".join(map(str, xs[:n])) + (f", ... ({len(xs)} in all)" if len(xs) > n else "") or "-"

        lines = [
            f"checkpoint : {self.path}",
            f"format     : {self.format}",
            f"arch       : {self.arch}{' (CIFAR stem)' if self.cifar_stem else ''}",
            f"method     : {self.method or '-'}",
            f"heads      : {few(self.heads)}"
            + (f"  (built fresh: {few(self.heads_built)})" if self.heads_built else ""),
            *(
                f"teacher    : {slot}: {t['tensors']} tensors, "
                + (f"loaded from {self.path}" if t["loaded"] else "none in the file: a copy of the online network")
                for slot, t in self.teachers.items()
            ),
            f"head sizes : {json.dumps(self.head_sizes) if self.head_sizes else '-'}",
            f"epoch      : {self.epoch if self.epoch is not None else '-'}",
            f"missing    : {few(self.missing)}",
            f"unexpected : {few(self.unexpected)}",
            f"dropped    : {few(self.dropped)}",
            f"optimizer  : {'stored' if self.optimizer_state is not None else '-'}",
            f"own state  : {'stored (the method state, e.g. the DINO centre)' if self.method_state is not None else '-'}",
        ]
        lines += [f"stand-in   : {s}" for s in self.stand_ins]
        if self.source:
            lines += [
                f"source     : {self.source.get('name')}"
                + (f" <- {self.source['url']}" if self.source.get("url") else ""),
                f"cached at  : {self.source.get('cache_path') or '-'}",
                f"sha256     : {self.source.get('sha256') or '-'}",
            ]
        lines += [f"note       : {n}" for n in self.notes]
        return "\n".join(lines)


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``<path>/checkpoints/last.pt`` for a run folder (``<path>/last.pt`` for its
    ``checkpoints/`` folder); CheckpointError otherwise."""
    path = Path(path)
    if path.is_dir():
        last = path / "checkpoints" / "last.pt"
        if not last.is_file() and path.name == "checkpoints" and (path / "last.pt").is_file():
            last = path / "last.pt"  # a run's checkpoints/ folder itself
        if not last.is_file():
            runs = sorted(
                {
                    str(p.parent.parent)
                    for g in ("*/checkpoints/last.pt", "*/*/checkpoints/last.pt")
                    for p in path.glob(g)
                }
            )  # a demo folder or a folder of runs: name them
            inside = (
                f"; it holds the run folders {', '.join(runs[:6])}{', ...' if len(runs) > 6 else ''}: pass one of them"
                if runs
                else ""
            )
            raise CheckpointError(
                f"{path} is a folder without checkpoints/last.pt{inside}; pass a checkpoint file "
                "(.pth/.pt/.safetensors) or a run folder written by `e2mc pretrain/continue`"
            )
        return last
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}; check the path, or pass a run folder")
    return path


def check_header(path: str | os.PathLike) -> None:
    """Raise the CheckpointError reading ``path`` would, before anything else is built, when its first
    bytes are those of no format e2mc reads: a torch zip (``PK``), a pickle (protocol >= 2, as
    ``torch.save`` writes), safetensors (a JSON header after 8 length bytes). Reads 9 bytes."""
    path = resolve_checkpoint_path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError as exc:  # unreadable (permissions, a device error): one line, not a traceback
        raise CheckpointError(
            f"cannot read {path}: {exc.strerror or exc}; check the file and its permissions"
        ) from None
    if head.startswith(b"PK") or head[:1] == b"\x80" or head[8:9] == b"{" or path.suffix == ".safetensors":
        return
    raise CheckpointError(describe_unreadable(path, ValueError("no checkpoint header")))


def read_checkpoint(
    path: str | os.PathLike, stand_ins: list | None = None, mmap: bool = False
) -> tuple[Any, dict | None]:
    """``(object, metadata)`` of a file, read safely (metadata: safetensors only, else ``None``).

    A pickle whose globals torch's weights-only loader refuses is read again when every one of
    them is known to be inert (:mod:`e2mc.models.safepickle`: a filter function of an official
    training script, ``argparse.Namespace``, numpy values, paths); what stood in for them is
    appended to ``stand_ins``. Raises CheckpointError naming the file when it is missing,
    truncated, not a checkpoint, or a pickle that would run code (naming those globals). ``mmap``: a
    zip checkpoint's tensors are memory-mapped, not read (for a look at keys and shapes only)."""
    path = resolve_checkpoint_path(path)
    with open(path, "rb") as fh:
        head = fh.read(9)
    if path.suffix == ".safetensors" or (head[8:9] == b"{" and not head.startswith(b"PK")):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except Exception as exc:
            raise CheckpointError(f"cannot read {path} as safetensors (truncated or not safetensors?): {exc}") from exc
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing: noise
            warnings.simplefilter("ignore")
            import zipfile

            lazy = mmap and zipfile.is_zipfile(path)  # torch maps zip checkpoints only
            return torch.load(path, map_location="cpu", weights_only=True, mmap=lazy), None
    except Exception as exc:  # torch raises many types for garbage; its text suggests unsafe loading: not shown
        first = exc
    names = _file_globals(path)
    if names and not safepickle.allowed_for(names)[2]:  # every global known to be inert: stand-ins
        try:
            obj, used = safepickle.load(path, names)
        except Exception as exc:
            first = exc
        else:
            if stand_ins is not None:
                stand_ins.extend(used)
            return obj, None
    raise CheckpointError(describe_unreadable(path, first, names)) from None


# Globals a plain tensor checkpoint's pickle may name (what torch's weights-only loader rebuilds).
_PLAIN_MODULES = ("torch", "collections", "_codecs")


def _pickle_globals(data: bytes) -> list[str] | None:
    """``module.name`` of every global a pickle stream imports (GLOBAL, STACK_GLOBAL, INST), scanning
    up to 4 consecutive pickles (torch's legacy format); None when ``data`` does not start with one."""
    import io
    import pickletools

    stream, names, seen_one = io.BytesIO(data), [], False
    for _ in range(4):
        pushed: list = []  # strings pushed, in order (None for other values), following the memo
        memo: dict = {}
        try:
            for op, arg, _pos in pickletools.genops(stream):
                name = op.name
                if "UNICODE" in name or name.endswith("STRING"):
                    pushed.append(str(arg))
                elif name == "MEMOIZE":
                    memo[len(memo)] = pushed[-1] if pushed else None
                elif name.endswith("PUT"):
                    memo[arg] = pushed[-1] if pushed else None
                elif name.endswith("GET"):
                    pushed.append(memo.get(arg))
                elif name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif name == "STACK_GLOBAL" and len(pushed) >= 2 and None not in pushed[-2:]:
                    names.append(f"{pushed[-2]}.{pushed[-1]}")
                else:
                    pushed.append(None)
        except Exception:  # not (or no longer) a pickle
            return names if seen_one else None
        seen_one = True
        if stream.tell() >= len(data):
            break
    return names


def _pickle_data(path: Path) -> bytes | None:
    """The pickle stream of a torch zip checkpoint, or the whole file when it may be a plain or
    legacy-torch pickle (up to 256 MiB); ``None`` otherwise. Nothing is executed."""
    import zipfile

    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                pkl = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                return zf.read(pkl) if pkl else None
        except (zipfile.BadZipFile, OSError, EOFError):
            return None
    return path.read_bytes() if path.stat().st_size <= 1 << 28 else None


def _file_globals(path: Path) -> list[str] | None:
    """``module.name`` of every global the file's pickle names (None: not a pickle)."""
    data = _pickle_data(path)
    return _pickle_globals(data) if data else None


def describe_unreadable(path: Path, exc: Exception, names: list[str] | None = None) -> str:
    """One line saying what ``path`` is when torch.load(weights_only=True) refused it (``names``:
    the globals its pickle names, when already scanned)."""
    import zipfile

    fix = "pass a .pth/.pt/.safetensors checkpoint (re-download or re-export it if it is cut short)"
    size = path.stat().st_size
    if size == 0:
        return f"cannot read {path}: not a PyTorch/safetensors checkpoint (empty file); {fix}"
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith(b"PK"):
        try:
            zipfile.ZipFile(path).close()
        except (zipfile.BadZipFile, OSError, EOFError):
            return f"cannot read {path}: not a PyTorch/safetensors checkpoint (or truncated: a zip archive cut short); {fix}"
    if isinstance(exc, CheckpointError) or "inert stand-in" in str(exc):  # a stand-in was called
        return (
            f"{path} calls a function of the script that wrote it while loading ({exc}); refused: e2mc will "
            "not execute it. Use a checkpoint that holds only tensors, or a .safetensors file"
        )
    if names is None:
        names = _file_globals(path)
    refused = safepickle.allowed_for(names)[2] if names else []
    unsafe = sorted({n for n in refused if n.split(".")[0] not in _PLAIN_MODULES})
    if unsafe:
        shown = ", ".join(unsafe[:4]) + (f", ... ({len(unsafe)} in all)" if len(unsafe) > 4 else "")
        return (
            f"{path} holds pickled Python objects that could run code when loaded ({shown}); e2mc loads only "
            "tensors and known-inert values (see e2mc.models.safepickle) and will not execute it. Use a "
            "checkpoint that holds only tensors (e.g. torch.save(model.state_dict()) from a trusted source), "
            "or a .safetensors file"
        )
    if names is not None:
        return (
            f"cannot read {path}: a Python pickle that is not a PyTorch checkpoint e2mc can read "
            f"({type(exc).__name__}); {fix}"
        )
    text = head.decode("utf-8", "ignore")
    if len(text) >= len(head) // 2 and all(c.isprintable() or c in "\t\r\n" for c in text):
        return f"cannot read {path}: not a PyTorch/safetensors checkpoint (a text file); {fix}"
    detail = type(exc).__name__
    msg = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
    if msg and "weights_only" not in msg and "Weights only" not in msg:
        detail += f": {msg}"
    return f"cannot read {path}: not a PyTorch/safetensors checkpoint (or truncated) ({detail}); {fix}"


def detect_format(obj, arch: str | None = None) -> str:
    """Name of the adapter that recognises ``obj``; CheckpointError naming the closest layout."""
    scores = {name: a.detect(obj) for name, a in ADAPTERS.items()}
    if arch and arch.startswith("timm:") and scores["torchvision"] >= 0.5:
        scores["timm"] = 0.65
    best = max(scores, key=scores.get)
    if scores[best] >= 0.5:
        return best
    keys = list(obj)[:8] if isinstance(obj, dict) else []
    near = max(ADAPTERS.values(), key=lambda a: a.closeness(obj))
    got = set(obj) if isinstance(obj, dict) else set()
    raise CheckpointError(
        f"unrecognised checkpoint layout (top-level keys: {keys or type(obj).__name__}). Closest known "
        f"layout: {near.name} = {near.description}; it expects {sorted(set(near.expected) - got)[:6]} "
        f"which are missing. Force a layout with format= (--format) if you know it."
    )


def _fill(model: SSLModel, parts: Parts, report: LoadReport, copied=()) -> dict:
    """Assemble the full state dict; raise on anything that would leave the model half-loaded.
    ``copied``: teacher slots the file lacks (made from the online modules after loading)."""
    expected = model.state_dict()
    loaded = {f"backbone.{k}": v for k, v in parts.backbone.items()}
    for h, sd in parts.heads.items():
        loaded.update({f"{h}.{k}": v for k, v in sd.items()})
    for k in [k for k in loaded if k not in expected]:
        if k.startswith("backbone.") and k[9:].startswith(CLASSIFIER_PREFIXES):
            report.unexpected.append(k[9:])
            report.dropped.append(k[9:])
            del loaded[k]
    extra = [k for k in loaded if k not in expected]
    for h in (*report.heads_built, *copied):
        loaded.update({k: v for k, v in expected.items() if k.startswith(h + ".")})
    loaded = {k: v.to(expected[k].dtype) if k in expected else v for k, v in loaded.items()}
    missing = [k for k in expected if k not in loaded]
    for k in [k for k in missing if k.endswith("num_batches_tracked")]:
        loaded[k] = torch.zeros_like(expected[k])
        report.missing.append(k)
    missing = [k for k in missing if k not in loaded]
    report.shape_mismatches = [
        (k, tuple(loaded[k].shape), tuple(expected[k].shape))
        for k in loaded
        if k in expected and loaded[k].shape != expected[k].shape
    ]
    if missing or extra or report.shape_mismatches:
        bad = [f"{k}: file {a} vs model {b}" for k, a, b in report.shape_mismatches[:3]]
        arch_hint = (
            "the file names this network itself (its own record, e.g. args.arch): pass --arch with the network "
            "its weights were trained as (e.g. timm:vit_small_patch16_224:embed_dim=...,depth=...,patch_size=...)"
            if getattr(report, "arch_from_file", False)
            else "check --arch (leave it out to detect it from the weights)"
        )
        method = f"method {report.method}" if report.method else "no method's heads"
        raise CheckpointError(
            f"{report.path} does not fit {report.arch} ({method}): "
            f"{len(missing)} missing keys {missing[:3]}, {len(extra)} unexpected keys {extra[:3]}, "
            f"{len(report.shape_mismatches)} shape mismatches {bad}. Nothing was loaded; {arch_hint}; and --method."
        )
    return loaded


def model_from_parts(
    parts: Parts,
    *,
    fmt: str,
    path: str = "<object>",
    arch=None,
    method=None,
    cifar_stem=None,
    fresh_heads=False,
    head_sizes=None,
) -> tuple[SSLModel, LoadReport]:
    """Build the SSLModel a split checkpoint describes and load it all-or-nothing."""
    det_arch, det_stem = detect_arch(parts.backbone) if parts.backbone else (None, None)
    if arch and det_arch and canonical_arch(arch) != canonical_arch(det_arch):
        raise CheckpointError(
            f"arch mismatch: the weights in {path} look like {det_arch}, not {arch} (model.arch: --arch, or a "
            "recipe's); leave --arch out, or --set model.arch=null over a recipe, to use the detected one"
        )
    if parts.arch and det_arch and canonical_arch(parts.arch) != canonical_arch(det_arch):
        parts.notes.append(f"the file says arch {parts.arch} but its weights are {det_arch}; using {det_arch}")
        parts.arch = None
    named_by_file = bool(not arch and parts.arch)  # the file's own record of its network (DINO's args.arch)
    arch = arch or parts.arch or det_arch
    if not arch:
        raise CheckpointError(
            f"cannot tell the architecture of {path} from its weights; pass --arch NAME (arch= in Python): a "
            "torchvision or timm name (resnet50, timm:vit_small_patch16_224), or timm:NAME:key=value,... for "
            "another size: the arch `e2mc inspect` printed for the model the file was written from"
        )
    stem = (
        cifar_stem if cifar_stem is not None else (parts.cifar_stem if parts.cifar_stem is not None else bool(det_stem))
    )
    ckpt_method = _parts_method(parts)
    report = LoadReport(
        path=str(path),
        format=fmt,
        arch=arch,
        cifar_stem=bool(stem),
        epoch=parts.epoch,
        dropped=list(parts.dropped),
        notes=list(parts.notes),
        layout=dict(parts.layout),
        optimizer_state=parts.optimizer,
        method_state=parts.method_state,
    )
    report.arch_from_file = named_by_file  # a misfit names --arch (the error in _fill)
    heads = dict(parts.heads)
    if method and ckpt_method and heads and method != ckpt_method:
        if not fresh_heads:
            raise CheckpointError(
                f"{path} holds {ckpt_method} heads ({', '.join(heads)}) but method {method!r} was asked; use "
                f"--method {ckpt_method} (method={ckpt_method!r}), or --fresh-heads (fresh_heads=True) to keep "
                f"only the backbone and build new {method} heads"
            )
        report.dropped += [f"{h}.{k}" for h, sd in heads.items() for k in sd]
        report.notes.append(f"dropped the checkpoint's {ckpt_method} heads; built {method} heads fresh")
        heads = {}
    method = method or ckpt_method
    report.method = method
    sizes = dict(parts.head_sizes or {}) if parts.method == method else {}
    sizes.update(infer_head_sizes(method, heads) if method else {})
    sizes.update(head_sizes or {})
    teachers = TEACHER_SLOTS.get(method, ()) if method else ()
    on_meta = (
        not arch.startswith("timm:")
        and not is_audio_arch(arch)
        and all(h in heads for h in (*_method_heads(method), *teachers))
    )
    try:
        with torch.device("meta") if on_meta else contextlib.nullcontext():  # skip a useless random init
            model = SSLModel.build(method, arch, cifar_stem=report.cifar_stem, **sizes)
    except ConfigError as exc:
        if not named_by_file:
            raise
        raise CheckpointError(
            f"{path} names its network {arch!r}, which cannot be built here ({exc}); pass --arch NAME (arch= in "
            "Python) with the network the file was trained with"
        ) from exc
    report.head_sizes = dict(model.head_sizes)
    report.heads = [h for h in model.head_names if h in heads and h not in teachers]
    report.heads_built = [h for h in model.head_names if h not in heads and h not in teachers]
    copied = [t for t in teachers if t not in heads]  # a teacher the file lacks: a copy of the online modules
    report.teachers = {
        t: {"tensors": len(heads[t]) if t in heads else len(getattr(model, t).state_dict()), "loaded": t in heads}
        for t in teachers
        if getattr(model, t, None) is not None
    }
    parts.heads = {h: sd for h, sd in heads.items() if h in model.head_names}
    report.dropped += [f"{h}.{k}" for h, sd in heads.items() if h not in model.head_names for k in sd]
    if report.heads_built:
        report.notes.append(f"heads built fresh: {', '.join(report.heads_built)}; {WARMUP_NOTE}")
    model.load_state_dict(_fill(model, parts, report, copied), strict=True, assign=on_meta)
    if on_meta and any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise CheckpointError(f"internal error: {arch} has tensors outside its state dict; report this")
    if copied:
        METHODS[method].init_teacher(model, copied)
        report.notes.append(f"{', '.join(copied)}: no momentum teacher in the file; a copy of the online network")
    return model, report


def _method_from_metadata(parts: Parts, meta: dict | None) -> None:
    """The method a safetensors file's metadata names, for a file that holds heads (a backbone-only
    export names the model's method too, but has no heads of it: it stays a backbone)."""
    if meta is not None and parts.heads and not parts.method and meta.get("method") in METHODS:
        parts.method = meta["method"]  # another tool's "method" entry is not one of e2mc's: ignored


def _parts_method(parts: Parts) -> str | None:
    if parts.method or not parts.heads:
        return parts.method
    # a file that does not name its method (a raw state dict): the method whose heads are exactly these
    same = [n for n, m in METHODS.items() if set(m.heads) == set(parts.heads)]
    return same[0] if len(same) == 1 else None


def checkpoint_method(path_or_name, format: str | None = None) -> str | None:
    """The SSL method whose heads a checkpoint holds; ``None`` for a backbone alone or a hub name."""
    return checkpoint_facts(path_or_name, format)[0]


def checkpoint_facts(path_or_name, format: str | None = None) -> tuple[str | None, str | None]:
    """``(method, arch)`` of a checkpoint without building its model: the SSL method whose heads
    it holds (``None`` for a backbone alone or a hub name) and its network (the file's record or
    read from its weights; a name's own; ``None`` when neither tells)."""
    text = str(path_or_name)
    if (not os.path.exists(text) and text.startswith(NAME_PREFIXES)) or (os.path.isdir(text) and is_hf_folder(text)):
        kind, _, rest = text.partition(":")
        return None, ("timm:" + rest if kind == "timm" else text if kind != "torchvision" else rest)
    if format is None and is_fairseq_file(text):  # an audio encoder: no SSL heads of e2mc's methods
        return None, f"fairseq:{text}"
    if zoo.is_zoo_name(text):
        row = zoo.get(text)
        return (row.method if row.heads else None), row.arch
    obj, meta = read_checkpoint(text, mmap=True)  # keys and shapes: the run's own load reads the tensors
    fmt = format if format not in (None, "safetensors") else detect_format(obj, (meta or {}).get("arch"))
    parts = ADAPTERS[fmt].split(obj)
    _method_from_metadata(parts, meta)
    arch = parts.arch or (detect_arch(parts.backbone)[0] if parts.backbone else None)
    return _parts_method(parts), arch


def _method_heads(method):
    from e2mc.models.heads import METHOD_HEADS

    return METHOD_HEADS.get(method, ()) if method else ()


def _from_name(name: str, method, cifar_stem, head_sizes) -> tuple[SSLModel, LoadReport]:
    kind, arch = name.split(":", 1)
    arch = "timm:" + arch if kind == "timm" else name if is_audio_arch(name) else arch
    pretrained = kind != "random"
    found = METHODS[method].source_heads(arch) if pretrained and method in METHODS else None
    sizes = found.head_sizes if found is not None else head_sizes  # the source's heads (a quantiser)
    model = SSLModel.build(method, arch, cifar_stem=bool(cifar_stem), pretrained=pretrained, **(sizes or {}))
    source = getattr(model.backbone, "pretrained_source", None) or {}
    report = LoadReport(
        path=source.get("cache_path") or name,
        format=kind,
        arch=arch,
        method=method,
        cifar_stem=bool(cifar_stem),
        heads_built=[h for h in model.head_names if h not in TEACHER_SLOTS.get(method, ())],  # teachers: copies
        head_sizes=dict(model.head_sizes),
        source={k: v for k, v in source.items() if k not in ("dropped", "notes")},
        dropped=list(source.get("dropped", [])),
        notes=list(source.get("notes", [])),
    )
    if found is not None:
        for h, sd in found.heads.items():
            getattr(model, h).load_state_dict(sd, strict=True)
        report.format, report.layout = found.layout.get("format", kind), dict(found.layout)
        report.heads = [h for h in model.head_names if h in found.heads]
        report.heads_built = [h for h in model.head_names if h not in found.heads]
        report.notes += found.notes
        took = set(found.taken)  # what the heads took is not dropped (a key or a module prefix)
        report.dropped = [k for k in report.dropped if k not in took and k.split(".")[0] not in took]
    if not pretrained:
        report.notes.append("random initialisation")
    else:
        report.notes.append(f"{kind} pretrained weights from {source.get('cache_path') or source.get('url')}")
        if cifar_stem:
            report.notes.append("the 3x3 CIFAR stem (conv1) is new and random; the rest is pretrained")
    if report.heads_built:
        report.notes.append(f"heads built fresh: {', '.join(report.heads_built)}; {WARMUP_NOTE}")
    return model, report


def load_model(
    path_or_name,
    method: str | None = None,
    arch: str | None = None,
    format: str | None = None,
    cifar_stem: bool | None = None,
    fresh_heads: bool = False,
    head_sizes: dict | None = None,
) -> tuple[SSLModel, LoadReport]:
    """Load a checkpoint file or hub name into an :class:`SSLModel` and say what happened.

    Args:
        path_or_name: a file (any layout in :mod:`e2mc.models.adapters`); a published model by
            name (``vicreg:resnet50-full``, ...: :mod:`e2mc.models.zoo`, downloaded into torch
            hub's cache); ``hf:<folder or hub name>`` (or a ``save_pretrained`` folder itself) /
            ``aves:<file.pt>`` / ``fairseq:<file.pt>`` or a fairseq checkpoint itself (audio encoders,
            :mod:`e2mc.models.audio`); ``torchvision:<arch>`` / ``timm:<name>[.<tag>]`` (the library's
            pretrained weights, :mod:`e2mc.models.hub`); ``random:<arch>`` (random weights).
            ``report.source`` says where a name's weights came from (URL, file, sha256).
        method: ``vicreg``/``swav``/``simsiam``; default: the checkpoint's. Heads the checkpoint
            lacks are built fresh (``report.heads_built``; warm them up before training).
        arch: default: detected from the weights (mismatch with the weights is an error).
        format: force a layout (``ADAPTERS`` name); default: detected.
        cifar_stem: default: detected (3x3 ``conv1``) or stored.
        fresh_heads: on a method mismatch, drop the checkpoint's heads and build new ones.
        head_sizes: sizes for heads built fresh (see ``e2mc.models.heads``).

    Example:
        >>> model, report = load_model("random:resnet_mini", method="vicreg")
        >>> report.heads_built
        ['projector']
    """
    if method is not None and method not in METHODS:
        import difflib

        close = difflib.get_close_matches(str(method), list(METHODS), n=1)
        raise ConfigError(
            f"unknown method {method!r}"
            + (f"; did you mean {close[0]!r}?" if close else "")
            + f" (methods: {', '.join(METHODS)})"
        )
    text = str(path_or_name)
    if os.path.isdir(text) and is_hf_folder(text):  # a transformers save_pretrained folder
        text = "hf:" + os.path.abspath(text)  # the arch a run stores: found again from any folder
    elif text.startswith(("hf:", "aves:", "fairseq:")) and os.path.exists(os.path.expanduser(text.split(":", 1)[1])):
        kind, local = text.split(":", 1)  # a local folder or file named with its prefix: the same
        text = f"{kind}:{os.path.abspath(os.path.expanduser(local))}"
    elif format is None and is_fairseq_file(text):  # a fairseq wav2vec 2.0 / HuBERT checkpoint
        text = "fairseq:" + os.path.abspath(text)  # the arch a run stores: found again from any folder
    if not os.path.exists(text) and text.startswith(NAME_PREFIXES):
        return _from_name(text, method, cifar_stem, head_sizes)
    source: dict = {}
    if zoo.is_zoo_name(text):
        file, source = zoo.fetch(text)
        text, format = str(file), format or zoo.get(source["name"]).layout
    text = str(resolve_checkpoint_path(text))
    stand_ins: list = []
    obj, meta = read_checkpoint(text, stand_ins)
    if format is not None and format not in ADAPTERS and format != "safetensors":
        raise CheckpointError(f"unknown format {format!r}; known: {', '.join(ADAPTERS)}, safetensors")
    fmt = format if format not in (None, "safetensors") else detect_format(obj, arch or (meta or {}).get("arch"))
    parts = ADAPTERS[fmt].split(obj)
    if meta is not None:  # what e2mc's own safetensors files (export, committed starts) say of themselves
        parts.arch = parts.arch or meta.get("arch") or None
        _method_from_metadata(parts, meta)
        if "cifar_stem" in meta:
            parts.cifar_stem = meta["cifar_stem"] == "True"
        fmt = "safetensors"
        parts.layout["source_format"] = meta.get("format")
    model, report = model_from_parts(
        parts,
        fmt=fmt,
        path=text,
        arch=arch,
        method=method,
        cifar_stem=cifar_stem,
        fresh_heads=fresh_heads,
        head_sizes=head_sizes,
    )
    report.stand_ins = stand_ins
    report.source = source
    return model, report
