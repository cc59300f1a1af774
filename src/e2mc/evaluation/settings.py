"""``EvalSettings``: every evaluation setting in one typed object (no torch import).

One section per protocol (``knn``, ``linear``, ``fewshot``, ``linear_finetune``, ``semisup``,
``entropy``, ``lidar``, ``decompose``) plus the settings every protocol shares (seeds, device,
splits, feature extraction). The CLI reaches any of them with ``--set eval.<key>=<value>``
(``eval.linear.weight_decays=[1e-5,1e-4]``, ``eval.seeds=[0,1]``); values are YAML, coerced to the
field's type and checked like the training config: a bad key or value is one ``ConfigError``
naming the key and what to give.

Example:
    >>> s = EvalSettings().with_overrides({"eval.linear.weight_decays": "[1e-6, 1e-5]", "eval.knn.ks": 20})
    >>> s.linear.weight_decays, s.knn.ks
    ((1e-06, 1e-05), (20,))
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from e2mc.config import TRANSFORM_NAMES, Range, parse_override
from e2mc.errors import ConfigError

PREFIX = "eval."
DEFAULT_WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
SOLVER_NAMES = ("auto", "lbfgs", "streaming")


@dataclass
class KnnSettings:
    ks: tuple[int, ...] = (10, 20, 100, 200)  # neighbour counts, one pass (clipped to the bank size)
    temperature: float = 0.07  # vote weights exp(cos / temperature)


@dataclass
class LinearSettings:
    weight_decays: tuple[float, ...] = DEFAULT_WEIGHT_DECAYS  # the L2 grid, chosen on held-out train
    solver: str = "auto"  # auto | lbfgs | streaming
    val_fraction: float = 0.1  # held-out share of the training split for the selection
    max_iter: int = 1000  # L-BFGS iterations at most
    streaming_epochs: int = 10  # streaming solver: epochs per fit (at least 1000 steps)
    streaming_batch_size: int = 1024


@dataclass
class FewshotSettings:
    shots: tuple[int, ...] = (1, 5, 10, 25)
    weight_decay: float = 1e-2


@dataclass
class FinetuneSettings:
    epochs: int = 10  # linear_finetune: frozen backbone, augmented, SGD + cosine; last epoch reported
    lr: float = 0.1


@dataclass
class SemisupSettings:
    epochs: int = 10
    fractions: tuple[float, ...] = (0.01, 0.1)  # labelled share of the training split
    lr_head: float = 0.1
    lr_backbone: float = 0.01


@dataclass
class EntropySettings:
    transform: Optional[str] = None  # None: the run's addon.transform, else the method's default


@dataclass
class LidarSettings:
    images: int = 500  # surrogate classes: that many test images ...
    views: int = 8  # ... each augmented this many times with the model's training views


@dataclass
class DecomposeSettings:
    reference: Optional[str] = None  # supervised encoder of the same architecture (approximation)
    subset: Optional[int] = None  # held-out training images (None: the test set's size, <= half)
    weight_decays: tuple[float, ...] = DEFAULT_WEIGHT_DECAYS
    val_fraction: float = 0.1  # share of the complement held out to choose the penalty
    epochs: int = 10  # streaming probe epochs per fit (at least min_steps steps)
    min_steps: int = 1000
    batch_size: int = 1024


@dataclass
class AudioEvalSettings:
    """How an audio folder is read for evaluation: fixed, deterministic segments (no random crop)."""

    segment_seconds: float = 4.0  # each recording cut into consecutive segments of this length, one item each
    min_seconds: float = 0.5  # a last piece (or a whole clip) shorter than this is skipped; longer: zero-padded


@dataclass
class EvalSettings:
    """Everything ``evaluate`` needs besides the model, the data and the protocol names."""

    seeds: tuple[int, ...] = (0, 1, 2)  # few-shot/semi-sup draws; seeds[0] seeds the rest
    device: Optional[str] = None  # None: cuda if available
    batch_size: int = 256  # images per forward pass when extracting features
    image_size: Optional[int] = None
    cache_dir: Optional[str] = None
    use_cache: bool = True
    feature_dtype: str = "float16"
    amp_dtype: Optional[str] = None  # bf16 | fp16 | fp32; None: bf16 on CUDA, fp32 on CPU
    train_split: str = "train"
    test_split: str = "test"
    root: Optional[str] = None  # where torchvision datasets live
    download: bool = False
    layers: Optional[str] = None  # None: the final features; all | layer1,layer3 | blocks.3 | -1
    token_pooling: str = "cls"  # transformer layers: cls | mean | cls+mean (mean of the patch tokens)
    network: str = "online"  # online (the backbone trained by gradient) | teacher (a momentum teacher's: DINO's eval)
    standardize: Optional[bool] = None  # kNN on features standardised with train mean/std; None: audio only
    audio: AudioEvalSettings = field(default_factory=AudioEvalSettings)
    knn: KnnSettings = field(default_factory=KnnSettings)
    linear: LinearSettings = field(default_factory=LinearSettings)
    fewshot: FewshotSettings = field(default_factory=FewshotSettings)
    linear_finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    semisup: SemisupSettings = field(default_factory=SemisupSettings)
    entropy: EntropySettings = field(default_factory=EntropySettings)
    lidar: LidarSettings = field(default_factory=LidarSettings)
    decompose: DecomposeSettings = field(default_factory=DecomposeSettings)

    def with_overrides(self, overrides: dict | list | None) -> "EvalSettings":
        """A copy with ``{"eval.knn.ks": value}`` or ``["eval.knn.ks=value", ...]`` applied (checked)."""
        new = dataclasses.replace(self, **{f.name: _copy(getattr(self, f.name)) for f in dataclasses.fields(self)})
        items = overrides.items() if isinstance(overrides, dict) else [parse_item(o) for o in overrides or []]
        for key, value in items:
            set_key(new, key, value)
        return new

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _copy(v):
    return dataclasses.replace(v) if dataclasses.is_dataclass(v) else v


POS, NONNEG, ONE = Range(0, lo_open=True), Range(0), Range(1)
FRACTION = Range(0, 1, lo_open=True, hi_open=True)
RANGES: dict[str, Range] = {
    "batch_size": ONE,
    "image_size": Range(8, 4096, optional=True),
    "seeds": Range(0, 2**32 - 1),
    "knn.ks": ONE,
    "knn.temperature": POS,
    "linear.weight_decays": NONNEG,
    "linear.val_fraction": FRACTION,
    "linear.max_iter": ONE,
    "linear.streaming_epochs": ONE,
    "linear.streaming_batch_size": ONE,
    "fewshot.shots": ONE,
    "fewshot.weight_decay": NONNEG,
    "linear_finetune.epochs": ONE,
    "linear_finetune.lr": POS,
    "semisup.epochs": ONE,
    "semisup.fractions": Range(0, 1, lo_open=True),
    "semisup.lr_head": POS,
    "semisup.lr_backbone": NONNEG,
    "lidar.images": Range(2),
    "lidar.views": Range(2),
    "decompose.subset": Range(2, optional=True),
    "decompose.weight_decays": NONNEG,
    "decompose.val_fraction": FRACTION,
    "decompose.epochs": ONE,
    "decompose.min_steps": ONE,
    "decompose.batch_size": ONE,
    "audio.segment_seconds": POS,
    "audio.min_seconds": POS,
}
CHOICES: dict[str, tuple] = {
    "feature_dtype": ("float16", "float32"),
    "amp_dtype": (None, "bf16", "fp16", "fp32"),
    "linear.solver": SOLVER_NAMES,
    "entropy.transform": (None, *TRANSFORM_NAMES),
    "token_pooling": ("cls", "mean", "cls+mean"),
    "network": ("online", "teacher"),
}
NONEMPTY = ("seeds", "knn.ks", "linear.weight_decays", "fewshot.shots", "semisup.fractions", "decompose.weight_decays")


def keys(cls: type = EvalSettings, prefix: str = "") -> list[str]:
    """Every settable key below ``cls`` (``"linear.weight_decays"``, ...), without ``eval.``."""
    out = []
    for name, tp in typing.get_type_hints(cls).items():
        out += keys(tp, f"{prefix}{name}.") if dataclasses.is_dataclass(tp) else [prefix + name]
    return out


def parse_item(item: str) -> tuple[str, Any]:
    """``"eval.knn.ks=[10,20]"`` -> (key, YAML-parsed value)."""
    return parse_override(item, "setting", "eval.linear.weight_decays=[1e-5,1e-4]")


def set_key(settings: EvalSettings, key: str, value: Any) -> None:
    """Set ``eval.<section>.<field>`` (or ``eval.<field>``) on ``settings``, coerced and checked."""
    short = key[len(PREFIX) :] if key.startswith(PREFIX) else None
    valid = keys()
    if short not in valid:
        close = difflib.get_close_matches(short or key, valid, n=1)
        hint = f"; did you mean eval.{close[0]}?" if close else ""
        raise ConfigError(
            f"unknown evaluation setting {key!r}{hint} (settings are eval.<key>; `e2mc evaluate --help` lists them)"
        )
    *path, name = short.split(".")
    obj = settings
    for part in path:
        obj = getattr(obj, part)
    tp = typing.get_type_hints(type(obj))[name]
    setattr(obj, name, check(short, coerce(value, tp, key)))


def check(short: str, value: Any) -> Any:
    """Range, choice and non-empty checks of one coerced value; ConfigError naming ``eval.<short>``."""
    full = PREFIX + short
    choices = CHOICES.get(short)
    if choices is not None and value not in choices:
        raise ConfigError(f"{full}={value!r} is not valid; give one of {', '.join(str(c) for c in choices)}")
    if short in NONEMPTY and isinstance(value, tuple) and not value:
        raise ConfigError(f"{full} is empty; give at least one value, e.g. {full}=[...]")
    rng = RANGES.get(short)
    for v in value if isinstance(value, tuple) else (value,):
        if rng is not None and not rng.ok(v):
            raise ConfigError(f"{full}={v} is out of range; give {rng.describe(isinstance(v, int))}")
    return value


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` (YAML-parsed) as the annotated type: Optional, bool, int, float, str, tuple[T, ...]."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Union:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            return None
        return coerce(value, args[0], key)
    if typing.get_origin(tp) is tuple:
        items = value if isinstance(value, (list, tuple)) else str(value).strip("[]()").split(",")
        if not isinstance(value, (list, tuple, str)):
            items = [value]
        return tuple(coerce(v.strip() if isinstance(v, str) else v, args[0], key) for v in items)
    name = getattr(tp, "__name__", str(tp))
    what = {int: "an integer", float: "a finite number", bool: "true or false", str: "a text value"}.get(tp, name)
    try:
        if tp is bool:
            low = str(value).strip().lower()
            if low not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
                raise ValueError(value)
            return low in ("true", "yes", "1", "on")
        if isinstance(value, bool) and tp in (int, float):
            raise ValueError(value)
        if tp is int:
            f = float(value)
            if not f.is_integer():
                raise ValueError(value)
            return int(f)
        if tp is float:
            f = float(value)
            if not math.isfinite(f):
                raise ValueError(value)
            return f
        if tp is str:
            if isinstance(value, list) and key.endswith(".layers"):  # eval.layers=[layer1,layer3]
                value = ",".join(str(v) for v in value)
            if isinstance(value, (dict, list)):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key}: cannot read {value!r} as {name}; give {what}") from None
    return value
