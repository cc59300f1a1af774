"""``evaluate``: one call from a checkpoint (or model) to a dict of evaluation results.

``evaluate(model, data, protocols, settings)``: the protocols come from the registry
(:mod:`e2mc.evaluation.protocols`), every setting from one :class:`EvalSettings`
(:mod:`e2mc.evaluation.settings`; the CLI's ``--set eval.KEY=VALUE``). The evaluation dataset is
independent of the dataset the model was trained on (transfer is just another ``dataset``
argument). Results: ``{protocol: {metric: value, ...}}``; seeded protocols (``fewshot``,
``semisup``) also carry ``"per_seed": {metric: [value per seed]}`` and ``"seeds"``. The others
give one value each: deterministic (``knn``, ``rankme``, ``entropy``, ``uniformity``,
``spectrum``, ``alpha_req``) or seeded by ``seeds[0]`` (the ``linear`` probe's selection split,
``linear_finetune``, ``lidar``'s images and augmentations, ``decompose``'s subset).

Per layer (``eval.layers``: ``"all"``, ``"layer1,layer3"``, ``"blocks.3,final"``, ``"-1"``;
:mod:`e2mc.evaluation.layers`): the features of every selected layer come from one forward pass
per batch (:mod:`e2mc.evaluation.layerfeatures`, a cache entry per layer and pooling) and every
protocol that works on features runs once per layer: ``{protocol: {"by_layer": {layer:
{metric: value}}}}``; those that need the model itself or its projector (``linear_finetune``,
``semisup``, ``lidar``, ``entropy``: ``Protocol.per_layer=False``) run once, on the backbone's
output, with ``"layer": "final"``. ``meta.layers`` lists the layers, ``meta.token_pooling`` the
pooling of transformer layers.

Example:
    >>> res = evaluate("run/checkpoints/last.pt", "digits", ("knn", "rankme"))  # doctest: +SKIP
    >>> res["knn"]["top1_k20"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Sequence

from e2mc.config import run_dataset
from e2mc.errors import ConfigError, DataError
from e2mc.evaluation.protocols import LABEL_FREE, PROTOCOLS, Context, get, seeds_used
from e2mc.evaluation.settings import EvalSettings, keys

__all__ = ["evaluate", "evaluation_settings", "LABEL_FREE", "PROTOCOLS", "seeds_used", "DEFAULT_PROTOCOLS"]

DEFAULT_PROTOCOLS = ("knn", "linear", "fewshot", "rankme")
# the keyword arguments ``evaluate`` took before EvalSettings -> the settings key they set
LEGACY_KWARGS = {
    "train_split": ("train_split",),
    "test_split": ("test_split",),
    "seeds": ("seeds",),
    "device": ("device",),
    "batch_size": ("batch_size",),
    "image_size": ("image_size",),
    "cache_dir": ("cache_dir",),
    "use_cache": ("use_cache",),
    "root": ("root",),
    "download": ("download",),
    "feature_dtype": ("feature_dtype",),
    "amp_dtype": ("amp_dtype",),
    "ks": ("knn.ks",),
    "shots": ("fewshot.shots",),
    "epochs": ("linear_finetune.epochs", "semisup.epochs"),
    "lidar_images": ("lidar.images",),
    "lidar_views": ("lidar.views",),
    "linear_solver": ("linear.solver",),
}


def evaluation_settings(settings: EvalSettings | dict | None = None, **kwargs) -> EvalSettings:
    """An :class:`EvalSettings` from ``settings`` (an object, or ``{"eval.key": value}`` overrides of
    the defaults) with the former ``evaluate`` keyword arguments (``ks=``, ``linear_solver=``, ...)
    applied on top; ConfigError for an unknown argument."""
    if isinstance(settings, EvalSettings):  # built by hand: every plain field coerced and checked as an override is
        given = {k: _field(settings, k) for k in keys()}
        objects = {k: v for k, v in given.items() if not _plain(v)}  # e.g. decompose.reference: a model
        settings = EvalSettings().with_overrides({f"eval.{k}": v for k, v in given.items() if k not in objects})
        for key, value in objects.items():
            *path, name = key.split(".")
            setattr(_field(settings, ".".join(path)) if path else settings, name, value)
    base = settings if isinstance(settings, EvalSettings) else EvalSettings().with_overrides(settings or {})
    over = {}
    for name, value in kwargs.items():
        if name not in LEGACY_KWARGS:
            raise ConfigError(
                f"evaluate() got an unknown argument {name!r}; pass settings=EvalSettings(...) (fields: "
                "e2mc.evaluation.settings.keys())"
            )
        for key in LEGACY_KWARGS[name]:
            over["eval." + key] = value
    return base.with_overrides(over)


def _plain(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def _field(settings, key: str):
    obj = settings
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _load(checkpoint_or_model):
    if isinstance(checkpoint_or_model, (str, os.PathLike)):
        from e2mc.models.checkpoints import load_model, resolve_checkpoint_path

        path = str(checkpoint_or_model)
        from e2mc.models.audio import is_audio_arch, is_hf_folder

        if is_audio_arch(path) or is_hf_folder(path):  # an audio encoder before any continuation
            return load_model(path)[0], None
        if os.path.isdir(path):  # a run folder; a folder of runs (the demo's) gets them named
            path = str(resolve_checkpoint_path(path))
        if not os.path.exists(path):
            if ":" in path and not os.path.dirname(path):  # a hub name such as random:resnet_mini
                return load_model(path)[0], None
            raise DataError(f"checkpoint {path} does not exist; pass a checkpoint file or a run folder")
        return load_model(path)[0], path
    return checkpoint_or_model, None


def default_dataset(sources: Sequence) -> str:
    """The dataset to evaluate ``sources`` (checkpoints, run folders, models) on when none is named:
    the runs' own training data (their config.yaml) when they share one; else a one-line error. A
    checkpoint that is not there is said first."""
    paths = [s for s in sources if isinstance(s, (str, os.PathLike))]
    for p in paths:
        if not os.path.exists(os.path.expanduser(str(p))) and ":" not in str(p):
            raise DataError(f"checkpoint {p} does not exist; pass a checkpoint file or a run folder")
    found = {run_dataset(p) for p in paths}
    if paths and len(paths) == len(sources) and len(found) == 1 and None not in found:
        return found.pop()
    raise ConfigError(
        "a dataset is required here (--dataset; dataset= in Python): name the data to evaluate on (digits, "
        "cifar10, a folder, ...); only run folders (or their checkpoints) with one training dataset of their "
        "own are evaluated on it by default"
    )


def _teacher_slot(model) -> str | None:
    from e2mc.models.heads import TEACHER_SLOTS

    method = getattr(model, "method", None)
    for slot in TEACHER_SLOTS.get(method, ()) if method else ():
        teacher = getattr(model, slot, None)
        if teacher is not None and "backbone" in teacher and slot != "label_model":  # HuBERT's: a frozen start
            return slot
    return None


def has_teacher(model) -> bool:
    """Whether ``model`` holds a momentum teacher with a backbone (``eval.network=teacher`` scores it)."""
    return _teacher_slot(model) is not None


def teacher_view(model):
    """A shallow copy of ``model`` whose modules are its momentum teacher's (DINO's ``teacher``,
    BYOL's ``target``, MoCo v3's ``momentum_encoder``: the method's teacher slot holding a backbone),
    for ``eval.network=teacher``: DINO's own eval_knn.py / eval_linear.py score the teacher."""
    import copy

    slot = _teacher_slot(model)
    if slot is not None:
        view = copy.copy(model)
        view._modules = dict(model._modules)
        for name, module in getattr(model, slot).items():
            view._modules[name] = module
        return view
    method = getattr(model, "method", None)
    raise ConfigError(
        f"eval.network=teacher: this model ({method or 'a backbone alone'}) has no momentum teacher; "
        "evaluate its online network (eval.network=online, the default)"
    )


def audio_options(model, st: EvalSettings):
    """The ``data.audio`` options an audio folder is read with for evaluation: the encoder's sample
    rate, the segments of the settings' ``audio`` section (consecutive, deterministic; the last piece zero-padded)."""
    from e2mc.config import AudioConfig

    seg, least = float(st.audio.segment_seconds), float(st.audio.min_seconds)
    if least > seg:
        raise ConfigError(
            f"eval.audio.min_seconds={least} is longer than eval.audio.segment_seconds={seg}; lower it or raise the segment"
        )
    rate = getattr(getattr(model, "backbone", model), "sample_rate", None) or AudioConfig.sample_rate
    return AudioConfig(sample_rate=int(rate), segment_seconds=seg, crop_seconds=least)


def _datasets(dataset, train_split, test_split, image_size, root=None, download=False, audio=None):
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        train, test, spec = dataset[0], dataset[1], "custom"
    elif not isinstance(dataset, (str, os.PathLike)):
        raise ConfigError("dataset must be a spec string (e.g. 'digits', 'cifar10', a folder) or a (train, test) pair")
    else:
        from e2mc.data.datasets import build_dataset

        kw = dict(image_size=image_size, root=root, download=download, audio=audio)
        train, test, spec = (
            build_dataset(str(dataset), train_split, **kw),
            build_dataset(str(dataset), test_split, **kw),
            str(dataset),
        )
    a, b = list(getattr(train, "classes", None) or []), list(getattr(test, "classes", None) or [])
    if a and b and a != b:  # the same index must mean the same class in both splits
        i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        first = f"{a[i] if i < len(a) else None!r} vs {b[i] if i < len(b) else None!r}"
        raise DataError(
            f"the {train_split} and {test_split} datasets have different class lists ({len(a)} vs "
            f"{len(b)} classes; index {i} is {first}), so their labels disagree; build both with one "
            "class list (same names, same order)"
        )
    return train, test, spec


def evaluate(
    checkpoint_or_model,
    dataset=None,
    protocols: Sequence[str] = DEFAULT_PROTOCOLS,
    settings: EvalSettings | dict | None = None,
    **deprecated,
) -> dict:
    """Evaluate a checkpoint file, run folder or in-memory ``SSLModel`` with the given protocols.

    Args:
        dataset: spec for ``e2mc.data.build_dataset`` (any dataset: transfer evaluation), or a
            ``(train_dataset, test_dataset)`` pair of datasets yielding ``(uint8 image, label)``;
            None: a run's own training data (:func:`default_dataset`; ``meta["dataset_default"]``).
        protocols: names from :data:`PROTOCOLS` (``e2mc.evaluation.protocols``).
        settings: an :class:`~e2mc.evaluation.settings.EvalSettings` (seeds, device, splits,
            feature extraction, and one section per protocol: ``settings.linear.weight_decays``,
            ``settings.knn.ks``, ...), or a dict of ``{"eval.<key>": value}`` overrides of its
            defaults (the CLI's ``--set``); None: the defaults.
        deprecated: the keyword arguments ``evaluate`` took before ``settings`` (``seeds=``,
            ``ks=``, ``linear_solver=``, ...): still applied on top of ``settings`` for one release,
            with a ``DeprecationWarning``.
    Returns:
        ``{protocol: {metric: value}}`` plus ``"meta"`` (checkpoint, dataset, seeds, settings).
    """
    st = evaluation_settings(settings, **deprecated)  # an unknown argument: ConfigError first
    if deprecated:
        warnings.warn(
            f"evaluate({', '.join(f'{k}=' for k in deprecated)}) is deprecated; pass "
            "settings=EvalSettings(...) or settings={'eval.<key>': value}",
            DeprecationWarning,
            stacklevel=2,
        )
    if isinstance(protocols, str):
        protocols = [p.strip() for p in protocols.split(",") if p.strip()]
    chosen = get(protocols)
    from e2mc.distributed import pick_device

    device = str(pick_device(st.device or "auto"))  # ConfigError for an unknown or absent device
    defaulted = dataset is None
    dataset = default_dataset([checkpoint_or_model]) if defaulted else dataset
    model, path = _load(checkpoint_or_model)
    model = teacher_view(model) if st.network == "teacher" else model
    if st.layers is not None:  # a bad layer name fails before any data is read
        from e2mc.evaluation.layers import resolve_layers

        layers = resolve_layers(getattr(model, "backbone", model), st.layers, st.token_pooling)
    splits = (st.train_split, st.test_split, st.image_size, st.root, st.download, audio_options(model, st))
    train_ds, test_ds, spec = _datasets(dataset, *splits)
    if hasattr(train_ds, "info"):  # images for an audio encoder, audio for an image backbone: one line
        from e2mc.models.audio import check_input

        check_input(getattr(model, "backbone", model), train_ds.info)
    audio = getattr(getattr(train_ds, "info", None), "modality", "image") == "audio"
    # the segments are part of what the features are: in the cache key
    spec_key = f"{spec}|segments={st.audio.segment_seconds}s,min={st.audio.min_seconds}s" if audio else spec
    spec_key += "|network=teacher" if st.network == "teacher" else ""  # another network: other features
    st = dataclasses.replace(st, standardize=bool(audio if st.standardize is None else st.standardize))
    from e2mc.models.model import has_head_embedding

    has_proj = has_head_embedding(model)  # a projector, or DINO's head bottleneck
    which = ("backbone", "projector") if has_proj and any(p.projector for p in chosen) else ("backbone",)
    kw = dict(
        batch_size=st.batch_size,
        device=device,
        which=which,
        cache_dir=st.cache_dir,
        use_cache=st.use_cache,
        cache_key_parts=(spec_key,),
        cache_dtype=st.feature_dtype,
        amp_dtype=st.amp_dtype,
    )
    from e2mc.evaluation.features import extract_features, file_sha256

    kw["model_hash"] = file_sha256(path) if path is not None else None  # else: hash of the state dict
    train_f = test_f = None
    if st.layers is None:
        train_f = extract_features(model, train_ds, **kw) if any(p.needs_train for p in chosen) else None
        test_f = extract_features(model, test_ds, **kw)
    out: dict = {
        "meta": {
            "checkpoint": path if path is not None else str(checkpoint_or_model)[:200],
            "dataset": spec,
            "dataset_default": defaulted,  # the run's own training data, no dataset named
            "train_split": st.train_split,
            "test_split": st.test_split,
            "seeds": [int(s) for s in st.seeds],
            "seeds_used": seeds_used(protocols, st.seeds),
            "n_train": len(train_ds),
            "n_test": len(test_ds),
            "network": st.network,
            "has_teacher": has_teacher(model),
            "standardized": st.standardize,
            "settings": {p.name: _section(st, p.name) for p in chosen if _section(st, p.name) is not None},
        }
    }
    if st.layers is not None:
        out["meta"].update(layers=[la.name for la in layers], token_pooling=st.token_pooling)
        return _per_layer(out, chosen, layers, (model, path, train_ds, test_ds), st, device, spec, kw)
    ctx = Context(model, path, train_ds, test_ds, train_f, test_f, st, device, spec, kw)
    for p in chosen:
        out[p.name] = p.run(ctx)
    return out


def _per_layer(out: dict, chosen, layers, what, st: EvalSettings, device: str, spec: str, kw: dict) -> dict:
    """Every per-layer protocol once per layer (``{"by_layer": {layer: result}}``, features of all
    layers from one forward per batch); the others (``per_layer=False``: they need the model's own
    output or the model itself) once, on the final features, with ``"layer": "final"``."""
    from e2mc.evaluation.features import extract_features
    from e2mc.evaluation.layerfeatures import extract_layer_features

    model, path, train_ds, test_ds = what
    lkw = {**kw, "token_pooling": st.token_pooling}
    per = [p for p in chosen if p.per_layer]
    train_l = extract_layer_features(model, train_ds, layers, **lkw) if any(p.needs_train for p in per) else None
    test_l = extract_layer_features(model, test_ds, layers, **lkw) if per else {}
    for p in chosen:
        if p.per_layer:
            res = {}
            for la in layers:
                tr = train_l[la.name] if train_l is not None else None
                res[la.name] = p.run(Context(model, path, train_ds, test_ds, tr, test_l[la.name], st, device, spec, kw))
            out[p.name] = {"by_layer": res}
        else:
            test_f = extract_features(model, test_ds, **kw)  # the final features' cache entry
            ctx = Context(model, path, train_ds, test_ds, None, test_f, st, device, spec, kw)
            out[p.name] = {**p.run(ctx), "layer": "final"}
    return out


def _section(st: EvalSettings, name: str) -> dict | None:
    """A protocol's settings as plain data (a model given in place of a name: its type's name)."""
    from dataclasses import fields, is_dataclass

    v = getattr(st, name, None)
    if not is_dataclass(v):
        return None
    plain = (str, int, float, bool, type(None))
    out = {}
    for f in fields(v):
        x = getattr(v, f.name)
        out[f.name] = list(x) if isinstance(x, tuple) else x if isinstance(x, plain) else type(x).__name__
    return out
