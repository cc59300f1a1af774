"""Typed run configuration: dataclasses, YAML loading, dotted overrides, method defaults.

One ``RunConfig`` object flows from the CLI / API down to the training loop. Build it with
``load_config(path_or_recipe, overrides)``; unknown keys raise ``ConfigError`` listing the valid
keys with a close-match suggestion.

Example:
    >>> cfg = load_config(None, ["method.name=simsiam", "optim.lr=0.05"])
    >>> cfg.addon.entropy_weight, cfg.addon.cov_weight, cfg.addon.transform
    (1.0, 25.0, 'gaussian_cdf')
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from e2mc.errors import ConfigError
from e2mc.methods import DEFAULT_METHOD, METHODS, get_method
from e2mc.recipes import recipe_path

# The names users may write, in one place that imports no torch (the CLI's choices come from here,
# so `e2mc --help` stays instant); tests/train/test_config.py checks them against the registries
# (methods.METHODS, criteria.ADDONS, criteria.entropy.TRANSFORMS, the optimiser builders). The
# methods' names, defaults and options come from their own files (``e2mc.methods``, no torch import).
METHOD_NAMES = tuple(METHODS)
ADDON_NAMES = ("e2mc", "vc", "uniformity", "mmcr", "none")
TRANSFORM_NAMES = ("sigmoid", "gaussian_cdf", "identity")
OPTIMIZER_NAMES = ("lars", "larc", "sgd", "adamw")
SCHEDULE_NAMES = ("constant", "cosine", "warmup_cosine")

# E2MC add-on defaults per method, from the paper's code: (entropy_weight, cov_weight, transform).
E2MC_DEFAULTS: dict[str, tuple[float, float, str]] = {n: m.e2mc_defaults for n, m in METHODS.items()}

# eps inside the log of the m-spacings (``addon.eps``). e2mc's own default, E2MC_EPS = 1e-8 (the
# criterion's default), is a named choice: it keeps the estimator closest to the exact spacing
# entropy. The paper's code uses larger values (PAPER_EPS): its VICReg script passes
# ``--epsilon 1e-7``; its other estimators use ``torch.finfo(torch.float32).eps``. Against
# 1e-7, 1e-8 lowers a zero spacing's log by ln(10) ~ 2.3 nats and makes a tie's gradient larger.
# The paper recipes set the paper's value.
E2MC_EPS = 1e-8
FLOAT32_EPS = 1.1920928955078125e-07  # torch.finfo(torch.float32).eps
PAPER_EPS: dict[str, float] = {n: m.paper_eps for n, m in METHODS.items()}  # each method file's ``paper_eps``


@dataclass
class AudioConfig:
    """Audio folders (wav/flac/ogg/mp3/..., used when data.dataset is one) and their training views."""

    sample_rate: int = 16000  # the encoder's rate (all bundled encoders: 16 kHz); recordings are resampled to it
    segment_seconds: float = 4.0  # long recordings are cut into segments of this length (one item each)
    crop_seconds: float = 2.0  # each view: a random crop of this length from one segment; shorter clips are skipped
    min_rms: float = 1e-4  # clips (and segments) quieter than this RMS are silent: skipped and counted
    gain_db: float = 6.0  # each view's gain: uniform in [-gain_db, +gain_db] dB
    noise_p: float = 0.5  # probability that a view gets another clip of the batch added as noise
    noise_snr_min_db: float = 5.0  # that noise's signal-to-noise ratio: uniform in [min, max] dB
    noise_snr_max_db: float = 20.0
    mask_p: float = 0.5  # probability that a view gets one span of time zeroed
    mask_fraction: float = 0.1  # that span's length as a fraction of the crop


@dataclass
class DataConfig:
    """Dataset and loader settings."""

    dataset: str = "digits"
    split: str = "train"
    root: Optional[str] = None  # where torchvision datasets live (default $E2MC_CACHE/datasets/<name>)
    download: bool = False  # let torchvision download cifar10/cifar100/stl10 into root if missing
    image_size: Optional[int] = None
    limit: Optional[int] = None
    cache_dir: Optional[str] = None
    on_error: str = "raise"
    num_workers: int = 0
    audio: AudioConfig = field(default_factory=AudioConfig)


@dataclass
class ModelConfig:
    """Model construction: ``init`` is a checkpoint path, a published model's name (``e2mc zoo``:
    ``vicreg:resnet50-full``, ...), ``torchvision:ARCH`` / ``timm:NAME`` (pretrained) or ``random:ARCH``."""

    init: str = "random:resnet_mini"
    arch: Optional[str] = None
    cifar_stem: bool = False
    format: Optional[str] = None
    head_sizes: dict = field(default_factory=dict)
    fresh_heads: bool = False  # on a method mismatch: keep the backbone, build new heads
    sync_bn: bool = False


@dataclass
class MethodConfig:
    """SSL method, its view recipe and its own options (``method.<key>``: declared with defaults
    and ranges in the method's file, ``Method.options``). ``cfg.method.<key>`` reads an option of
    the current method (its default when unset); an option of another method is a ConfigError."""

    name: str = DEFAULT_METHOD
    views: Optional[str] = None  # view recipe; None = the method's own
    options: dict = field(default_factory=dict)  # the options set; read them as attributes

    def __getattr__(self, key: str) -> Any:  # called only for names that are not fields
        if key.startswith("__"):
            raise AttributeError(key)
        spec = METHODS.get(self.__dict__.get("name"))
        if spec is None or key not in spec.options:
            raise AttributeError(f"method {self.__dict__.get('name')!r} has no option {key!r}")
        opts = self.__dict__.get("options", {})
        return opts[key] if key in opts else copy.deepcopy(spec.options[key].default)

    def __setattr__(self, key: str, value: Any) -> None:
        if key in ("name", "views", "options"):
            object.__setattr__(self, key, value)
        else:
            self.options[key] = value

    def to_dict(self) -> dict:
        """``{name, views, <every option of the method>}`` (the YAML shape ``method: {name: ..., temperature: ...}``)."""
        spec = METHODS.get(self.name)
        opts = {k: getattr(self, k) for k in (spec.options if spec is not None else ())}
        return {"name": self.name, "views": self.views, **copy.deepcopy(opts)}


@dataclass
class AddonConfig:
    """Add-on on top of the base loss. E2MC fields left None take the method's default."""

    name: str = "e2mc"
    transform: Optional[str] = None
    entropy_weight: Optional[float] = None
    cov_weight: Optional[float] = None  # or "auto": measured on the start (e2mc.train.calibrate)
    cov_fraction: float = 0.1  # cov_weight=auto: weighted covariance term / base loss at the start
    m: Optional[int] = None
    eps: float = E2MC_EPS  # inside the log of the spacings; paper's code: PAPER_EPS[method]
    kwargs: dict = field(default_factory=dict)  # extra constructor arguments (vc, uniformity, mmcr)


@dataclass
class OptimConfig:
    """Optimiser and schedule. ``lr`` is per the scaling rule's base batch when ``lr_scaling`` != none."""

    name: str = "lars"
    lr: float = 0.2
    weight_decay: float = 1e-6
    momentum: float = 0.9
    schedule: Optional[str] = None  # None: constant (continue) / warmup_cosine (pretrain)
    warmup_epochs: Optional[float] = None  # None: 0 (continue) / 10% of the epochs (pretrain)
    batch_size: int = 256  # per device
    lr_scaling: str = "none"  # none | linear | sqrt  (relative to base_batch, global batch)
    base_batch: int = 256
    # None: the optimiser's default (lars/sgd/adamw exclude biases and norm weights, ndim <= 1, from
    # weight decay (and LARS's trust ratio); larc excludes nothing, as SwAV). false: decay everything.
    exclude_bias_and_norm: Optional[bool] = None
    # Continue mode: load the momentum (Adam moments) stored in the source checkpoint into the new
    # optimiser (same kind, same parameter shapes; ConfigError otherwise). Resuming an e2mc run
    # always restores its own optimiser, whatever this says.
    restore_state: bool = False


@dataclass
class GuardConfig:
    """The collapse guard (``e2mc.train.guard``): every ``interval`` steps (and before the first and after the last)
    rank 0 scores a fixed probe set without labels; a score below ``(1 - drop)`` x the reference
    (``reference``: ``start``, the start's score 1.0, or ``best``, the best score so far) or a
    non-finite loss restores the best checkpoint and then, by ``action``:
    ``lower_lr`` (default) continues at ``lr_factor`` x the LR, ``rollback`` continues at the same
    LR, ``stop`` ends the run; ``off`` disables the guard. After ``max_rollbacks`` restores the run
    stops (on the best); ``e2mc pretrain/continue`` then exit with status 4."""

    # lower_lr | rollback | stop | off. lower_lr by default: restarted at the LR that collapsed it, a run
    # collapses again (tests/train/test_guard.py's LR x 1000 run did after each of its 3 rollbacks)
    action: str = "lower_lr"
    interval: int = 50  # steps between checks (README "Collapse guard": cost < 5% of the step time)
    probe_size: int = 256  # images of the fixed probe set (the first of train.probe_size's draw)
    drop: float = 0.5  # relative drop of the guard score below the reference that triggers the action
    # start: below (1 - drop) x the start's score (1.0); best: below (1 - drop) x the best so far. start by
    # default: a transient rise (a growing embedding scale raises the entropy term) made `best` stop healthy
    # DINO runs (README "Collapse guard", benchmarks/bench_guard_rule.py)
    reference: str = "start"
    lr_factor: float = 0.1  # lower_lr: the LR is multiplied by this at each event
    max_rollbacks: int = 3  # restores before the run stops on the best checkpoint
    knn_k: int = 10  # neighbours of the kNN agreement (and of the labelled kNN)
    labels: bool = False  # also score leave-one-out kNN accuracy with the probe images' labels


@dataclass
class TrainConfig:
    """Loop settings."""

    epochs: int = 1
    precision: str = "fp32"
    channels_last: bool = False
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    grad_clip: Optional[float] = None
    head_warmup_steps: int = 0
    probe_size: int = 512
    log_every: int = 10
    checkpoint_every_epochs: int = 1
    max_steps: Optional[int] = None
    tensorboard: bool = True
    # --resume when the training data differs from the checkpoint's (its fingerprint): recompute
    # the LR schedule for the new data instead of refusing. Used once: not kept in the run's config.
    allow_data_change: bool = False
    guard: GuardConfig = field(default_factory=GuardConfig)


@dataclass
class OutConfig:
    """Run folder."""

    dir: str = "runs/run"
    resume: bool = False
    overwrite: bool = False


@dataclass
class RunConfig:
    """The whole run: one object that flows down from the CLI/API to the loop."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    addon: AddonConfig = field(default_factory=AddonConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: OutConfig = field(default_factory=OutConfig)
    mode: str = "pretrain"  # pretrain | continue

    def to_dict(self) -> dict:
        """Plain nested dict of the config (YAML-safe)."""
        out = dataclasses.asdict(self)
        out["method"] = self.method.to_dict()
        return out

    def to_yaml(self) -> str:
        """YAML text of the resolved config."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_CHOICES = {
    "method.name": METHOD_NAMES,
    "addon.name": ADDON_NAMES,
    "optim.name": OPTIMIZER_NAMES,
    "optim.schedule": SCHEDULE_NAMES,
    "optim.lr_scaling": ("none", "linear", "sqrt"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "data.on_error": ("raise", "skip"),
    "mode": ("pretrain", "continue"),
    "train.guard.action": ("rollback", "lower_lr", "stop", "off"),
    "train.guard.reference": ("start", "best"),
}


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric field: finite, ``lo`` <(=) value <(=) ``hi``; ``None`` when optional."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False  # value must be > lo (not >=)
    hi_open: bool = False
    optional: bool = False  # None allowed (its meaning is in the field's comment)

    def ok(self, v) -> bool:
        if v is None:
            return self.optional
        if isinstance(v, bool) or not math.isfinite(v):
            return False
        return (v > self.lo if self.lo_open else v >= self.lo) and (v < self.hi if self.hi_open else v <= self.hi)

    def describe(self, integer: bool = False) -> str:
        parts = [f"{'>' if self.lo_open else '>='} {self.lo:g}"] if self.lo > -math.inf else []
        parts += [f"{'<' if self.hi_open else '<='} {self.hi:g}"] if self.hi < math.inf else []
        text = ("an integer" if integer else "a finite number") + (" " + " and ".join(parts) if parts else "")
        return text + (" (or null)" if self.optional else "")


POSITIVE, NON_NEGATIVE, AT_LEAST_ONE = Range(0, lo_open=True), Range(0), Range(1)
# Every int/float field of the run config and its allowed range, checked by ``validate`` after the
# YAML, overrides and CLI flags are applied (tests check that no numeric field is missing here).
# optim.lr: > 0 and <= 1000 (a larger base LR is a typo in every known recipe, and overflows some
# optimisers). train.grad_clip: null or 0 = no clipping, > 0 = max gradient norm.
RANGES: dict[str, Range] = {
    "data.image_size": Range(8, 4096, optional=True),
    "data.limit": Range(1, optional=True),
    "data.num_workers": Range(0, 256),
    "data.audio.sample_rate": Range(1000, 384000),
    "data.audio.segment_seconds": POSITIVE,
    "data.audio.crop_seconds": POSITIVE,
    "data.audio.min_rms": NON_NEGATIVE,
    "data.audio.gain_db": NON_NEGATIVE,
    "data.audio.noise_p": Range(0, 1),
    "data.audio.noise_snr_min_db": Range(-60, 120),
    "data.audio.noise_snr_max_db": Range(-60, 120),
    "data.audio.mask_p": Range(0, 1),
    "data.audio.mask_fraction": Range(0, 1, hi_open=True),
    "addon.entropy_weight": Range(0, optional=True),
    "addon.cov_weight": Range(0, optional=True),
    "addon.m": Range(1, optional=True),
    "addon.cov_fraction": POSITIVE,
    "addon.eps": Range(0, 1, lo_open=True),
    "optim.lr": Range(0, 1000, lo_open=True),
    "optim.weight_decay": NON_NEGATIVE,
    "optim.momentum": Range(0, 1, hi_open=True),
    "optim.warmup_epochs": Range(0, optional=True),
    "optim.batch_size": AT_LEAST_ONE,
    "optim.base_batch": AT_LEAST_ONE,
    "train.epochs": AT_LEAST_ONE,
    "train.seed": Range(0, 2**32 - 1),
    "train.grad_clip": Range(0, optional=True),
    "train.head_warmup_steps": NON_NEGATIVE,
    "train.probe_size": NON_NEGATIVE,
    "train.log_every": AT_LEAST_ONE,
    "train.checkpoint_every_epochs": AT_LEAST_ONE,
    "train.max_steps": Range(1, optional=True),
    "train.guard.interval": AT_LEAST_ONE,
    "train.guard.probe_size": Range(0),  # 0 or 1: no probe, the guard does nothing
    "train.guard.drop": Range(0, 1, lo_open=True, hi_open=True),
    "train.guard.lr_factor": Range(0, 1, lo_open=True, hi_open=True),
    "train.guard.max_rollbacks": NON_NEGATIVE,
    "train.guard.knn_k": AT_LEAST_ONE,
}
# every method's numeric options (``method.<key>``), as its file declares them
OPTION_OWNERS: dict[str, list[str]] = {}  # option -> the methods that declare it
for _m in METHODS.values():
    for _k, _o in _m.options.items():
        OPTION_OWNERS.setdefault(_k, []).append(_m.name)
        if isinstance(_o.default, (int, float)) and not isinstance(_o.default, bool):
            RANGES.setdefault(f"method.{_k}", Range(_o.lo, _o.hi, lo_open=_o.lo_open))
        if _o.choices:
            _CHOICES.setdefault(f"method.{_k}", tuple(_o.choices))


# Fields that also take the string "auto" (e2mc.train.calibrate measures them on the start checkpoint).
AUTO_KEYS = ("addon.cov_weight",)


def validate(cfg: RunConfig) -> RunConfig:
    """Check every numeric field against ``RANGES``; ConfigError naming the key, value and range."""
    _check_method_options(cfg.method)
    for key, rng in RANGES.items():
        *sections, name = key.split(".")
        if sections == ["method"]:
            if name not in get_method(cfg.method.name).options:
                continue  # another method's option
        owner = cfg
        for section in sections:
            owner = getattr(owner, section)
        value = getattr(owner, name)
        if key in AUTO_KEYS and value == "auto":
            continue
        if not rng.ok(value):
            raise ConfigError(f"{key}={value} is out of range; give {rng.describe(isinstance(value, int))}")
    for key, value in cfg.method.options.items():  # a method's string options with their choices
        _check_choice(f"method.{key}", value)
    a = cfg.data.audio
    if a.noise_snr_min_db > a.noise_snr_max_db:
        raise ConfigError(
            f"data.audio.noise_snr_min_db={a.noise_snr_min_db} > noise_snr_max_db={a.noise_snr_max_db}; swap them"
        )
    return cfg


def _check_method_options(m: MethodConfig) -> None:
    """ConfigError for an option set that the method ``m.name`` does not have. An option of another
    method at that method's default passes (dropped): run configs written before options were
    per method list every method's fields."""
    own = get_method(m.name).options
    for key, value in list(m.options.items()):
        if key in own:
            continue
        owners = OPTION_OWNERS.get(key, [])
        if all(value == METHODS[o].options[key].default for o in owners) and owners:
            del m.options[key]
            continue
        raise ConfigError(
            f"method.{key} is an option of {' / '.join(owners)}, not of {m.name}; remove it, or set "
            f"method.name={owners[0]}"
        )


def _set_method_option(m: MethodConfig, key: str, value: Any, full: str) -> None:
    """Set ``method.<key>``: an option some method declares, coerced to its default's type."""
    owners = OPTION_OWNERS.get(key)
    if not owners:
        valid = [f"method.{k}" for k in ("name", "views", *OPTION_OWNERS)]
        raise ConfigError(f"unknown config key {full!r}.{_suggest(full, valid)}")
    default = METHODS[owners[0]].options[key].default
    tp = type(default)
    value = _coerce(value, tp, full)
    rng = RANGES.get(full)
    if rng is not None and not rng.ok(value):
        raise ConfigError(f"{full}={value} is out of range; give {rng.describe(tp is int)}")
    _check_choice(full, value)
    m.options[key] = value


def _check_choice(full: str, value: Any) -> None:
    """ConfigError when ``full`` has choices (``_CHOICES``) and ``value`` is not one of them."""
    choices = _CHOICES.get(full)
    if choices is not None and value not in choices:
        raise ConfigError(f"{full}={value!r} is not valid; use one of {list(choices)}.")


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{hint} Valid keys: {', '.join(valid)}."


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce ``value`` (already YAML-parsed) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, args[0], key)
    try:
        if tp is bool:
            if isinstance(value, str):
                low = value.lower()
                if low in ("true", "yes", "1", "on"):
                    return True
                if low in ("false", "no", "0", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, (bool, int)):
                return bool(value)
            raise ValueError(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
        if tp in (list, dict):
            if not isinstance(value, tp):
                raise ValueError(value)
            return value
    except (TypeError, ValueError, OverflowError):
        name = getattr(tp, "__name__", str(tp))
        raise ConfigError(f"{key}: cannot read {value!r} as {name}; give a finite {name} value") from None
    return value


def _types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _set(obj: Any, parts: list[str], value: Any, full: str) -> None:
    """Set a dotted key on the nested dataclass ``obj`` with type checks."""
    types = _types(type(obj))
    head = parts[0]
    prefix = full[: len(full) - len(".".join(parts))]
    if isinstance(obj, MethodConfig) and head not in types and len(parts) == 1:
        _set_method_option(obj, head, value, full)
        return
    if head not in types or (isinstance(obj, MethodConfig) and head == "options"):
        raise ConfigError(f"unknown config key {full!r}.{_suggest(prefix + head, [prefix + k for k in types])}")
    tp = types[head]
    if dataclasses.is_dataclass(tp):
        if len(parts) == 1:
            if not isinstance(value, dict):
                raise ConfigError(f"{full} is a section; give a mapping or set {full}.<key>")
            for k, v in value.items():
                _set(getattr(obj, head), [str(k)], v, f"{full}.{k}")
            return
        _set(getattr(obj, head), parts[1:], value, full)
        return
    if len(parts) > 1:
        if tp is dict:  # free-form dict, e.g. addon.kwargs.weight=2
            d = getattr(obj, head)
            d[".".join(parts[1:])] = value
            return
        raise ConfigError(f"{prefix + head} is a value, not a section; cannot set {full!r}")
    if full in AUTO_KEYS and isinstance(value, str) and value.strip().lower() == "auto":
        setattr(obj, head, "auto")
        return
    choices = _CHOICES.get(full)
    if value is False and choices is not None and "off" in choices:
        value = "off"  # YAML reads an unquoted `off` as false
    value = _coerce(value, tp, full)
    if choices is not None and value not in choices:
        raise ConfigError(f"{full}={value!r} is not valid; use one of {list(choices)}.")
    rng = RANGES.get(full)
    if rng is not None and not rng.ok(value):
        raise ConfigError(f"{full}={value} is out of range; give {rng.describe(tp is int)}")
    setattr(obj, head, value)


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in ("model.head_sizes", "addon.kwargs"):
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


def parse_override(item: str, what: str = "override", example: str = "optim.lr=0.1") -> tuple[str, Any]:
    """Split ``"a.b=value"`` into the key and the YAML-parsed value."""
    if "=" not in item:
        raise ConfigError(f"{what} {item!r} must look like key=value, e.g. {example}")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_method_defaults(cfg: RunConfig) -> RunConfig:
    """Fill fields the user left unset: E2MC weights/transform per method (paper's code) and
    the schedule per mode (continue: constant LR, no warm-up; pretrain: warm-up + cosine)."""
    if cfg.optim.schedule is None:
        cfg.optim.schedule = "constant" if cfg.mode == "continue" else "warmup_cosine"
    if cfg.optim.warmup_epochs is None:
        cfg.optim.warmup_epochs = 0.0 if cfg.mode == "continue" else round(0.1 * cfg.train.epochs, 3)
    ent, cov, transform = get_method(cfg.method.name).e2mc_defaults
    if cfg.addon.name == "e2mc":
        if cfg.addon.entropy_weight is None:
            cfg.addon.entropy_weight = ent
        if cfg.addon.cov_weight is None:
            cfg.addon.cov_weight = cov
        if cfg.addon.transform is None:
            cfg.addon.transform = transform
    return cfg


def load_config(
    path_or_recipe: str | Path | dict | RunConfig | None = None, overrides: list[str] | dict | None = None
) -> RunConfig:
    """Build a ``RunConfig`` from a YAML file, a recipe name, a dict or nothing, plus overrides.

    ``overrides`` is a list of ``"dotted.key=value"`` strings (values parsed as YAML, then coerced
    to the field's type) or a dict ``{"optim.lr": 0.1}``. Method defaults for E2MC are applied
    last, only to fields still unset.

    Every numeric value is checked against ``RANGES`` (finite, in range) as it is set and once
    more on the final config.

    Raises:
        ConfigError: unknown key (with a suggestion), bad or out-of-range value, missing file or recipe.
    """
    cfg = RunConfig()
    if isinstance(path_or_recipe, (RunConfig, dict)):
        data = path_or_recipe.to_dict() if isinstance(path_or_recipe, RunConfig) else path_or_recipe
        for key, value in _flatten(data):
            _set(cfg, key.split("."), value, key)
    elif path_or_recipe is not None:
        text = _read_source(str(path_or_recipe))
        data = load_yaml(text, str(path_or_recipe)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config {path_or_recipe} must be a YAML mapping of sections")
        data.pop("run_info", None)  # written by the trainer into a run's config.yaml; not settings
        for key, value in _flatten(data):
            _set(cfg, key.split("."), value, key)
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    for key, value in items:
        _set(cfg, key.split("."), value, key)
    return validate(apply_method_defaults(cfg))


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with a key given twice (YAML says keys are
    unique; PyYAML would silently keep the last one, dropping e.g. a whole ``optim:`` block)."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001, D102
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: PyYAML's own error follows
                    continue
                if first is not key_node:
                    line = first.start_mark.line + 1
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {line})", key_node.start_mark
                    )
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML ``text`` like ``yaml.safe_load`` but refuse duplicate keys: ConfigError naming the
    key and both lines, or the parser's own message for bad syntax."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.constructor.ConstructorError as exc:
        if exc.problem and exc.problem.startswith("duplicate key"):
            line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
            raise ConfigError(
                f"config {source}: {exc.problem} again at line {line}; YAML keeps only one of them, so "
                "merge the two entries into one (or delete the one you do not mean)"
            ) from None
        raise ConfigError(f"cannot parse YAML config {source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse YAML config {source}: {exc}") from None


def _read_source(src: str) -> str:
    path = Path(src).expanduser()
    if path.is_file():
        try:
            return path.read_text()
        except UnicodeDecodeError:
            raise ConfigError(
                f"config {src} is not a YAML text file; pass a .yaml run config (a checkpoint "
                "goes to `e2mc continue CHECKPOINT`)"
            ) from None
    if path.suffix in (".yaml", ".yml") or "/" in src:
        raise ConfigError(
            f"config file {src} not found; check the path or use a recipe name (`e2mc recipes` lists them)"
        )
    return recipe_path(src).read_text()


def run_dataset(path) -> str | None:
    """``data.dataset`` of the run a checkpoint belongs to (its folder's config.yaml), or None."""
    p = Path(os.path.expanduser(str(path)))
    for cand in (p / "config.yaml", p.parent.parent / "config.yaml" if p.parent.name == "checkpoints" else None):
        if cand is not None and cand.is_file():
            try:
                return str(((yaml.safe_load(cand.read_text()) or {}).get("data") or {}).get("dataset") or "") or None
            except (OSError, yaml.YAMLError):
                return None
    return None
