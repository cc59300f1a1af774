"""Optimisers (LARS/LARC, SGD, AdamW) and per-step learning-rate schedules.

API summary
-----------
- ``param_groups(model, weight_decay, exclude_bias_and_norm=True) -> list[dict]``: two groups;
  parameters with ``ndim == 1`` (biases, norm weights) get ``weight_decay=0`` and
  ``lars_exclude=True``.
- ``LARS(params, lr, weight_decay=0, momentum=0.9, eta=0.001, exclude_bias_and_norm=True,
  clip=False, larc=False, eps=0.0)``.
- ``build_optimizer(name, model_or_params, lr, weight_decay, momentum=0.9, betas=(0.9, 0.999),
  exclude_bias_and_norm=None, **kw)``; ``name`` in ``OPTIMIZERS`` = lars, larc, sgd, adamw.
- ``build_scheduler(kind, optimizer, total_steps, warmup_steps=0, final_lr_ratio=0.0)`` ->
  ``torch.optim.lr_scheduler.LambdaLR`` stepped once per optimiser step; ``kind`` in
  constant, cosine, warmup_cosine. ``lr_factor(kind, step, ...)`` is the closed form.
- ``scaled_lr(base_lr, global_batch, reference=256, rule="linear")``: the LR for the global batch
  (``none`` | ``linear`` | ``sqrt`` relative to ``reference``); the Trainer's ``optim.lr_scaling``.
- ``restore_optimizer_state(optimizer, model, stored, source=...)``: the per-parameter state
  (momentum buffers / Adam moments) of a stored ``state_dict()``, possibly of another code base's
  model, copied into ``optimizer`` (the Trainer's ``optim.restore_state``).

LARS (VICReg's): for a parameter p with gradient g, ``d = g + wd * p``, trust ratio
``q = eta * ||p|| / ||d||`` (1 when either norm is 0), ``mu = momentum * mu + q * d``,
``p -= lr * mu``. Parameters whose group has ``lars_exclude=True`` (or, for groups without the
flag and ``exclude_bias_and_norm=True``, ``ndim == 1``) skip both weight decay and the trust
ratio: plain momentum SGD. ``larc=True`` uses apex LARC's ratio
``eta * ||p|| / (||g|| + wd * ||p|| + eps)`` (SwAV's SGD + LARC), and ``clip=True`` caps the
local rate to ``min(q / lr, 1)`` so that the effective rate is ``min(q, lr)`` (LARC clipping).
All state (momentum buffers, scheduler step) lives in ``state_dict()``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Union

import torch
from torch import nn

from e2mc.config import OPTIMIZER_NAMES, SCHEDULE_NAMES
from e2mc.errors import ConfigError

OPTIMIZERS = OPTIMIZER_NAMES
SCHEDULES = SCHEDULE_NAMES


def param_groups(model_or_params, weight_decay: float, exclude_bias_and_norm: bool = True) -> list:
    """Split trainable parameters (of a module or an iterable of tensors) into a decayed group
    and an excluded (``ndim <= 1``: biases, norm weights) group."""
    params = model_or_params.parameters() if isinstance(model_or_params, nn.Module) else model_or_params
    decay, excluded = [], []
    for p in params:
        if p.requires_grad:
            (excluded if exclude_bias_and_norm and p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": excluded, "weight_decay": 0.0, "lars_exclude": True},
    ]
    return [g for g in groups if g["params"]]


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (VICReg form; LARC form with ``larc=True``).

    Example::

        opt = LARS(param_groups(model, 1e-6), lr=0.2, weight_decay=1e-6)
    """

    def __init__(
        self,
        params,
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        eta: float = 0.001,
        exclude_bias_and_norm: bool = True,
        clip: bool = False,
        larc: bool = False,
        eps: float = 0.0,
    ):
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or eta <= 0:
            raise ConfigError(
                f"LARS needs lr >= 0, weight_decay >= 0, 0 <= momentum < 1 and "
                f"eta > 0; got lr={lr}, weight_decay={weight_decay}, "
                f"momentum={momentum}, eta={eta}."
            )
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            eta=eta,
            exclude_bias_and_norm=exclude_bias_and_norm,
            clip=clip,
            larc=larc,
            eps=eps,
        )
        super().__init__(params, defaults)

    @staticmethod
    def _excluded(group: dict, p: torch.Tensor) -> bool:
        if "lars_exclude" in group:
            return bool(group["lars_exclude"])
        return bool(group["exclude_bias_and_norm"]) and p.ndim <= 1

    @torch.no_grad()
    def step(self, closure=None):
        """One update; ``closure`` re-evaluates the loss (optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if not self._excluded(g, p):
                    wd = g["weight_decay"]
                    p_norm = torch.linalg.vector_norm(p)
                    if g["larc"]:
                        denom = torch.linalg.vector_norm(dp) + wd * p_norm + g["eps"]
                    dp = dp.add(p, alpha=wd) if wd else dp
                    if not g["larc"]:
                        denom = torch.linalg.vector_norm(dp) + g["eps"]
                    one = torch.ones_like(p_norm)
                    q = torch.where((p_norm > 0) & (denom > 0), g["eta"] * p_norm / denom, one)
                    if g["clip"]:  # apex LARC: local rate min(q / lr, 1)
                        q = torch.clamp(q / g["lr"], max=1.0) if g["lr"] > 0 else one
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])
        return loss


def _params(model_or_params, weight_decay, exclude):
    if not isinstance(model_or_params, nn.Module):
        model_or_params = list(model_or_params)
        if model_or_params and isinstance(model_or_params[0], dict):
            return model_or_params  # explicit param groups: used as given
    return param_groups(model_or_params, weight_decay, exclude)


def build_optimizer(
    name: str,
    model_or_params: Union[nn.Module, Iterable],
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    betas=(0.9, 0.999),
    exclude_bias_and_norm=None,
    **kw,
) -> torch.optim.Optimizer:
    """Optimiser by name: ``lars`` (VICReg), ``larc`` (SwAV's SGD+LARC: LARC ratio on every
    parameter, no exclusion by default), ``sgd`` (momentum), ``adamw``.
    ``exclude_bias_and_norm`` defaults to True except for ``larc`` (SwAV decays everything). Extra ``kw`` go to the
    optimiser (e.g. ``eta``, ``clip``, ``nesterov``, ``eps``)."""
    name = name.lower()
    if name not in OPTIMIZERS:
        raise ConfigError(f"Unknown optimizer {name!r}; choose one of {OPTIMIZERS}.")
    if exclude_bias_and_norm is None:
        exclude_bias_and_norm = name != "larc"
    if name == "larc":
        kw.setdefault("larc", True)
        kw.setdefault("eps", 1e-8)  # apex LARC's eps (SwAV)
    groups = _params(model_or_params, weight_decay, exclude_bias_and_norm)
    if name in ("lars", "larc"):
        return LARS(
            groups,
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            exclude_bias_and_norm=exclude_bias_and_norm,
            **kw,
        )
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, momentum=momentum, **kw)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=tuple(betas), **kw)


def lr_factor(kind: str, step: int, total_steps: int, warmup_steps: int = 0, final_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base rate at (0-based) ``step``.

    Warm-up (any kind, when ``warmup_steps > 0``): ``(step + 1) / warmup_steps``. Then
    ``constant``: 1. ``cosine``/``warmup_cosine``: ``r + (1 - r) * (1 + cos(pi * t / T)) / 2``
    with ``t = step - warmup_steps`` (capped at ``T = total_steps - warmup_steps``).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    t = min(step - warmup_steps, span)
    return final_lr_ratio + (1.0 - final_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t / span))


class _Factor:
    """Picklable lambda for LambdaLR (its attributes go into the scheduler's state_dict)."""

    def __init__(self, kind, total_steps, warmup_steps, final_lr_ratio):
        self.kind, self.total_steps = kind, total_steps
        self.warmup_steps, self.final_lr_ratio = warmup_steps, final_lr_ratio

    def __call__(self, step: int) -> float:
        return lr_factor(self.kind, step, self.total_steps, self.warmup_steps, self.final_lr_ratio)


def build_scheduler(
    kind: str, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, final_lr_ratio: float = 0.0
):
    """Per-step ``LambdaLR``; ``constant`` with no warm-up is the paper's continued training.

    ``cosine`` and ``warmup_cosine`` share one formula (the warm-up length decides); a
    ``warmup_cosine`` whose warm-up rounds to 0 steps (tiny runs) is a plain cosine.
    """
    if kind not in SCHEDULES:
        raise ConfigError(f"Unknown schedule {kind!r}; choose one of {SCHEDULES}.")
    if total_steps < 1 or warmup_steps < 0 or warmup_steps > total_steps:
        raise ConfigError(
            f"Need total_steps >= 1 and 0 <= warmup_steps <= total_steps; got "
            f"total_steps={total_steps}, warmup_steps={warmup_steps}."
        )
    if not 0.0 <= final_lr_ratio <= 1.0:
        raise ConfigError(f"final_lr_ratio must be in [0, 1], got {final_lr_ratio}.")
    fn = _Factor(kind, int(total_steps), int(warmup_steps), float(final_lr_ratio))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


LR_SCALINGS = ("none", "linear", "sqrt")


def scaled_lr(base_lr: float, global_batch: int, reference: int = 256, rule: str = "linear") -> float:
    """The learning rate for ``global_batch`` (what the Trainer uses, ``optim.lr_scaling``).

    ``none``: ``base_lr``; ``linear``: ``base_lr * global_batch / reference``; ``sqrt``:
    ``base_lr * sqrt(global_batch / reference)``.
    """
    if global_batch < 1 or reference < 1:
        raise ConfigError(f"global_batch and reference must be >= 1, got {global_batch}, {reference}.")
    if rule not in LR_SCALINGS:
        raise ConfigError(f"Unknown LR scaling {rule!r}; choose one of {LR_SCALINGS}.")
    ratio = global_batch / reference
    return base_lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


# Per-parameter state of each kind of optimiser: the key e2mc's optimiser uses, and the keys a
# stored state may use for the same quantity. A heavy-ball buffer (``mu = momentum * mu + d``,
# ``p -= lr * mu``) is the same in LARS/LARC (VICReg, e2mc), torch SGD and apex LARC (SwAV: an SGD).
_MOMENTUM = ("mu", "momentum_buffer")
_ADAM = ("exp_avg", "exp_avg_sq")


def _target_keys(optimizer: torch.optim.Optimizer) -> tuple[str, tuple[str, ...]]:
    if isinstance(optimizer, torch.optim.AdamW):
        return "adam", _ADAM
    if isinstance(optimizer, (LARS, torch.optim.SGD)):
        if any(g.get("momentum", 0) == 0 for g in optimizer.param_groups):
            raise ConfigError(
                "optim.restore_state=true but optim.momentum=0 keeps no momentum to restore; "
                "set optim.momentum > 0 or optim.restore_state=false"
            )
        return "momentum", ("mu",) if isinstance(optimizer, LARS) else ("momentum_buffer",)
    raise ConfigError(
        f"optim.restore_state: cannot restore the state of {type(optimizer).__name__}; set optim.restore_state=false"
    )


def _stored_kind(entries: list) -> str:
    if all(any(isinstance(e.get(k), torch.Tensor) for k in _MOMENTUM) for e in entries):
        return "momentum"
    if all(all(isinstance(e.get(k), torch.Tensor) for k in _ADAM) for e in entries):
        return "adam"
    keys = set().union(*(e.keys() for e in entries))
    return f"unknown ({', '.join(sorted(map(str, keys)))})"


def restore_optimizer_state(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    stored: Any,
    *,
    source: str = "the checkpoint",
    paired: list | None = None,
) -> str:
    """Copy the per-parameter state of a stored optimiser ``state_dict()`` into ``optimizer``.

    Only the buffers move (momentum, or AdamW's moments and step); the new optimiser keeps its
    configured LR, weight decay and momentum. A stored state names parameters by position: the
    stored ``param_groups`` flattened in order. For the official VICReg/SwAV/SimSiam checkpoints
    that is the source model's ``parameters()`` order (backbone in torchvision ResNet order, then
    the heads), the order of ``model.parameters()``; for an e2mc checkpoint it is e2mc's own
    parameter-group order. Both orders are tried: a mapping is used when the number of parameters
    and every position's shape match (the shape is read from the stored buffer); when none
    matches, or both match with different pairings, nothing is changed and ConfigError says what
    differs. Returns a one-line summary; ``paired`` (a list) receives the parameters in stored order.
    """
    off = "; set optim.restore_state=false to start a fresh optimiser"
    if not (
        isinstance(stored, dict)
        and isinstance(stored.get("state"), dict)
        and isinstance(stored.get("param_groups"), list)
    ):
        raise ConfigError(
            f"optim.restore_state: the optimiser state in {source} is not a state_dict "
            f"with 'state' and 'param_groups'{off}"
        )
    ids = [i for g in stored["param_groups"] for i in g.get("params", [])]
    entries = [stored["state"].get(i, {}) for i in ids]
    kind, keys = _target_keys(optimizer)
    empty = sum(1 for e in entries if not e)  # a parameter that never had a gradient (e.g. frozen)
    if empty == len(ids):
        raise ConfigError(
            f"optim.restore_state: the optimiser state in {source} holds no buffers for any of its "
            f"{len(ids)} parameters, so there is nothing to restore{off}"
        )
    have = _stored_kind([e for e in entries if e])
    if have != kind:
        raise ConfigError(
            f"optim.restore_state: {source} stores {have} optimiser state but "
            f"optim.name={type(optimizer).__name__.lower()} keeps {kind} state{off}"
        )
    main = (
        (lambda e: next(e[k] for k in _MOMENTUM if isinstance(e.get(k), torch.Tensor)))
        if kind == "momentum"
        else (lambda e: e["exp_avg"])
    )
    shapes = [tuple(main(e).shape) if e else None for e in entries]  # None: no buffer, any shape fits
    in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    orders = {
        "model": [p for p in model.parameters() if id(p) in in_opt],
        "optimiser": [p for g in optimizer.param_groups for p in g["params"]],
    }
    fits, why = {}, []
    for label, params in orders.items():
        if len(params) != len(shapes):
            why.append(f"{len(shapes)} stored vs {len(params)} trainable parameters")
            continue
        bad = next((i for i, p in enumerate(params) if shapes[i] not in (None, tuple(p.shape))), None)
        if bad is None:
            fits[label] = params
        else:
            p = params[bad]
            why.append(
                f"in {label} order, position {bad} ({names.get(id(p), '?')}) is {tuple(p.shape)} "
                f"here but {shapes[bad]} stored"
            )
    if not fits:
        raise ConfigError(
            f"optim.restore_state: the optimiser state in {source} does not fit this model: "
            f"{'; '.join(dict.fromkeys(why))}{off}"
        )
    pairings = {tuple(map(id, params)) for params in fits.values()}
    if len(pairings) > 1:
        raise ConfigError(
            f"optim.restore_state: the optimiser state in {source} fits this model in two "
            f"parameter orders with different pairings (ambiguous){off}"
        )
    label, params = next(iter(fits.items()))
    if paired is not None:
        paired[:] = params
    for e, p in zip(entries, params):
        if not e:
            continue  # no stored buffer: this parameter starts fresh, as it would have in the source run
        state = optimizer.state[p]
        if kind == "momentum":
            state[keys[0]] = torch.empty_like(p).copy_(main(e))
        else:
            for k in _ADAM:
                state[k] = torch.empty_like(p).copy_(e[k])
            step = e.get("step", 0)
            state["step"] = torch.as_tensor(float(step), dtype=torch.float32)
    fresh = f"; {empty} without a stored buffer start fresh" if empty else ""
    return (
        f"restored the optimiser state of {len(params) - empty} parameters ({kind}, {label} order) from {source}{fresh}"
    )


def optimizer_template(stored: dict, names: list[str]) -> dict:
    """What ``export --to original`` needs to write a run's optimiser back in the layout of the
    ``stored`` one it was restored from: the stored ``param_groups`` (hyperparameters, parameter
    positions; a filter function as plain data, :func:`e2mc.models.safepickle.to_plain`), the
    model parameter ``names`` at those positions, and each position's state keys (e.g. ``mu``)."""
    from e2mc.models.safepickle import to_plain

    groups = [dict(g) for g in stored["param_groups"]]
    ids = [i for g in groups for i in g.get("params", [])]
    keys = [sorted(str(k) for k in stored["state"].get(i, {})) for i in ids]
    return {"param_groups": to_plain(groups), "names": list(names), "state_keys": keys}
