"""The search space of ``e2mc tune``: which continuation settings are probed.

A space is a YAML mapping (every key optional; the defaults are :data:`DEFAULT_SPACE`):

.. code-block:: yaml

    addons: [none, e2mc, vc, uniformity, mmcr]   # add-ons to try (none = base loss only)
    e2mc:                                        # E2MC's grid (only for addon e2mc)
      entropy_weight: {log: [1, 100, 3]}         # 1, 10, 100 (a list works too: [1, 10, 100])
      cov_weight: {log: [1, 10000, 3]}           # 1, 100, 10000; "auto" = addon.cov_weight=auto
      transform: [sigmoid]                       # null = the recipe's
    lr: {relative: [0.1, 0.316, 1]}             # LR grid: multiples of the recipe's optim.lr
                                                 # (a list of LRs works too; null = the recipe's)
    epochs: 2                                    # epochs of the longest probe (the last rung;
                                                 # not given: --confirm-epochs when set)
    set: {optim.batch_size: 256}                 # overrides for every probe

Every point is one probe: the cross product of the LRs with, for each add-on, its own grid (E2MC:
entropy weight x covariance weight x transform; the other add-ons: their recipe defaults).
``{log: [lo, hi, n]}`` is ``n`` values evenly spaced in log10 from ``lo`` to ``hi``. The LR matters
most for a continuation (the recipe's pre-training LR is often too high), so the default space
tries the recipe's LR and two log-spaced fractions of it (1/10, 1/sqrt(10));
:meth:`SearchSpace.with_base_lr` turns ``{relative: [...]}`` into LRs once the recipe is known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from e2mc.config import ADDON_NAMES, load_yaml
from e2mc.errors import ConfigError

DEFAULT_SPACE: dict = {
    "addons": ["none", "e2mc", "vc", "uniformity", "mmcr"],
    "e2mc": {"entropy_weight": {"log": [1, 100, 3]}, "cov_weight": {"log": [1, 10000, 3]}, "transform": [None]},
    "lr": {"relative": [0.1, 0.316, 1.0]},
    "epochs": 2,
    "set": {},
}
_KEYS = ("addons", "e2mc", "lr", "epochs", "set")
_E2MC_KEYS = ("entropy_weight", "cov_weight", "transform")
_TRANSFORM_TAGS = {"sigmoid": "sig", "gaussian_cdf": "cdf", "identity": "id"}


@dataclass(frozen=True)
class Point:
    """One probe setting: a stable label and the config overrides that make it."""

    label: str
    addon: str
    overrides: dict = field(hash=False)


@dataclass
class SearchSpace:
    """Parsed, validated search space; ``points`` is the grid in a fixed order."""

    addons: list
    entropy_weight: list
    cov_weight: list
    transform: list
    lr: list
    epochs: float
    sets: dict
    lr_relative: list | None = None  # multiples of the recipe's LR (``lr`` is then filled by with_base_lr)
    epochs_given: bool = True  # the space named its epochs (else --confirm-epochs may set them)

    def with_base_lr(self, base_lr: float) -> "SearchSpace":
        """This space with ``lr_relative`` resolved against the recipe's ``optim.lr``."""
        if not self.lr_relative:
            return self
        lrs = [float(f"{f * float(base_lr):.4g}") for f in self.lr_relative]
        return replace(self, lr=lrs, lr_relative=None)

    def with_epochs(self, epochs: float) -> "SearchSpace":
        """This space with the longest probe at ``epochs``."""
        return replace(self, epochs=float(epochs), epochs_given=True)

    @property
    def points(self) -> list[Point]:
        out = []
        for lr in self.lr:
            for addon in self.addons:
                grid = (
                    [(ew, cw, tr) for ew in self.entropy_weight for cw in self.cov_weight for tr in self.transform]
                    if addon == "e2mc"
                    else [(None, None, None)]
                )
                for ew, cw, tr in grid:
                    over: dict[str, Any] = {"addon.name": addon}
                    label = addon
                    if addon == "e2mc":
                        over.update({"addon.entropy_weight": ew, "addon.cov_weight": cw})
                        label += f"-ew{_num(ew)}-cw{_num(cw)}"
                        if tr is not None:
                            over["addon.transform"] = tr
                            label += f"-{_TRANSFORM_TAGS.get(tr, tr)}"
                    if lr is not None:
                        over["optim.lr"] = lr
                        label += f"-lr{_num(lr)}"
                    out.append(Point(label, addon, over))
        return out

    def to_dict(self) -> dict:
        return {
            "addons": list(self.addons),
            "e2mc": {
                "entropy_weight": list(self.entropy_weight),
                "cov_weight": list(self.cov_weight),
                "transform": list(self.transform),
            },
            "lr": list(self.lr) if not self.lr_relative else {"relative": list(self.lr_relative)},
            "epochs": self.epochs,
            "set": dict(self.sets),
        }


def _num(x) -> str:
    return x if isinstance(x, str) else f"{x:g}"


def _grid(value, key: str, where: str) -> list:
    """A list, a scalar or ``{log: [lo, hi, n]}`` -> list of values."""
    if isinstance(value, dict):
        if set(value) != {"log"} or not isinstance(value["log"], (list, tuple)) or len(value["log"]) != 3:
            raise ConfigError(f"{where}: {key} must be a list or {{log: [lo, hi, n]}}, got {value!r}")
        lo, hi, n = value["log"]
        try:
            lo, hi, n = float(lo), float(hi), int(n)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}: {key}: {{log: [lo, hi, n]}} needs two numbers > 0 and a count, got {value['log']!r}"
            ) from None
        if not (lo > 0 and hi > 0 and n >= 1 and math.isfinite(lo) and math.isfinite(hi)):
            raise ConfigError(f"{where}: {key}: {{log: [lo, hi, n]}} needs lo, hi > 0 and n >= 1, got {value['log']!r}")
        if n == 1:
            return [lo]
        step = (math.log10(hi) - math.log10(lo)) / (n - 1)
        return [float(f"{10 ** (math.log10(lo) + i * step):.6g}") for i in range(n)]
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ConfigError(f"{where}: {key} is empty; give at least one value")
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"{where}: {key} lists a value twice ({values}); give each once")
    return values


def _weights(values: list, key: str, where: str, auto: bool = False) -> list:
    out = []
    for v in values:
        if auto and isinstance(v, str) and v.strip().lower() == "auto":
            out.append("auto")
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            extra = ' or "auto"' if auto else ""
            raise ConfigError(f"{where}: e2mc.{key} values must be finite numbers >= 0{extra}, got {v!r}")
        out.append(float(v))
    return out


def parse_space(source: str | Path | dict | None = None) -> SearchSpace:
    """A :class:`SearchSpace` from a YAML file path, a dict or None (the default space).

    Raises ConfigError (one line) for unknown keys, bad values, and a space with a single point
    (nothing to choose between).
    """
    where = "default search space"
    if source is None:
        data: dict = {}
    elif isinstance(source, dict):
        data, where = source, "search space"
    else:
        path = Path(source).expanduser()
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"search space {path} not found; give a YAML file (see `e2mc tune --help`)")
        try:
            data = load_yaml(path.read_text(), str(path)) or {}
        except UnicodeDecodeError as exc:
            raise ConfigError(f"cannot parse search space {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a YAML mapping with keys {', '.join(_KEYS)}")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {', '.join(_KEYS)}")
    merged = {**DEFAULT_SPACE, **data}
    e2 = merged["e2mc"] if merged["e2mc"] is not None else {}
    if not isinstance(e2, dict) or set(e2) - set(_E2MC_KEYS):
        raise ConfigError(f"{where}: e2mc must be a mapping with keys {', '.join(_E2MC_KEYS)}")
    e2 = {**DEFAULT_SPACE["e2mc"], **e2}
    addons = _grid(merged["addons"], "addons", where)
    bad = [a for a in addons if a not in ADDON_NAMES]
    if bad:
        raise ConfigError(f"{where}: unknown add-on(s) {bad}; choose from {', '.join(ADDON_NAMES)}")
    ew = _weights(_grid(e2["entropy_weight"], "entropy_weight", where), "entropy_weight", where)
    cw = _weights(_grid(e2["cov_weight"], "cov_weight", where), "cov_weight", where, auto=True)
    from e2mc.criteria.entropy import TRANSFORMS

    tr = _grid(e2["transform"], "transform", where)
    badt = [t for t in tr if t is not None and t not in TRANSFORMS]
    if badt:
        raise ConfigError(f"{where}: unknown transform(s) {badt}; choose from {', '.join(TRANSFORMS)} (or null)")
    rel = None
    if isinstance(merged["lr"], dict) and set(merged["lr"]) == {"relative"}:
        rel = _grid(merged["lr"]["relative"], "lr.relative", where)
        if not all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f <= 100 for f in rel):
            raise ConfigError(
                f"{where}: lr: {{relative: [...]}} takes multiples of the recipe's LR in (0, 100], got {rel}"
            )
        rel = [float(f) for f in rel]
        lrs = list(rel)  # placeholders until with_base_lr (labels and counts)
    else:
        lrs = _grid(merged["lr"], "lr", where)
    for v in lrs:
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1000):
            raise ConfigError(f"{where}: lr values must be numbers in (0, 1000] or null (the recipe's), got {v!r}")
    epochs = merged["epochs"]
    if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not 0 < epochs <= 1000:
        raise ConfigError(f"{where}: epochs must be a number > 0 (the longest probe's epochs), got {epochs!r}")
    sets = merged["set"] or {}
    if not isinstance(sets, dict):
        raise ConfigError(f"{where}: set must be a mapping of config keys to values, e.g. {{optim.batch_size: 256}}")
    owned = [
        k
        for k in sets
        if k
        in (
            "addon.name",
            "addon.entropy_weight",
            "addon.cov_weight",
            "addon.transform",
            "optim.lr",
            "train.epochs",
            "train.max_steps",
            "out.dir",
            "model.init",
        )
    ]
    if owned:
        raise ConfigError(f"{where}: set may not fix {owned}: the search space or e2mc tune sets them")
    lr_values = [None if v is None else float(v) for v in lrs]
    space = SearchSpace(addons, ew, cw, tr, lr_values, float(epochs), dict(sets), rel, "epochs" in data)
    n = len(space.points)
    if n < 2:
        raise ConfigError(
            f"{where} has {n} point ({space.points[0].label}): nothing to choose between; add "
            "add-ons, weights or LRs (e.g. addons: [none, e2mc])"
        )
    return space
