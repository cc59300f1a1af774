"""Momentum teachers (BYOL's target network, MoCo's momentum encoder): shared by the methods
that keep one.

A teacher is a frozen copy of online modules, held by the model in its own slot (``Method.teacher``
declares ``{slot: (module names)}``), so it is saved, restored, sharded (every process holds the
same copy: the online weights it follows are the same on every rank after DDP's step) and
exported with the model's state dict. It moves by an exponential moving average of the online
parameters, ``t <- m t + (1 - m) o``; its buffers (BatchNorm statistics) are its own, updated by
its forward in train mode, as in the official code of both methods.

The momentum follows the official cosine schedule from a start value to ``momentum_end`` (1.0):
``m(k) = end - (end - start) (cos(pi k / K) + 1) / 2`` over the K steps of the run. A fresh
pre-training starts from ``method.momentum`` (the official 0.99 / 0.996); a continuation from
``method.continue_momentum``, by default the end value: the released run ended at momentum 1, so
the teacher is held where it ended unless set (e.g. ``--set method.continue_momentum=0.996`` to run
the schedule again over the continuation).

Nothing here imports torch at import time (the config reads ``momentum_options``).
"""

from __future__ import annotations

import math
from typing import Any

from e2mc.errors import ConfigError
from e2mc.methods.base import Option, StepContext, copy_into, teacher_copy  # noqa: F401 (re-exported)


def momentum_options(base: float) -> dict:
    """The config options of a method with a momentum teacher (``method.<key>``)."""
    return {
        "momentum": Option(base, 0, hi=1, help="teacher momentum at the start of a fresh pre-training (official)"),
        "continue_momentum": Option(
            1.0, 0, hi=1, help="teacher momentum at the start of a continuation (1.0: where the released run ended)"
        ),
        "momentum_end": Option(1.0, 0, hi=1, help="teacher momentum at the end of the run (cosine schedule)"),
        "momentum_schedule": Option("cosine", help="cosine (official) or constant"),
    }


def cosine_momentum(start: float, end: float, step: int, total: int) -> float:
    """``end - (end - start) * (cos(pi * step / total) + 1) / 2``; ``start`` when ``total`` is 0."""
    if total <= 0:
        return float(start)
    return float(end - (end - start) * (math.cos(math.pi * min(step, total) / total) + 1) / 2)


def momentum_at(ctx: StepContext) -> float:
    """The teacher momentum of the step ``ctx`` describes, from ``ctx.cfg.method``'s options."""
    m = ctx.cfg.method
    start = m.continue_momentum if getattr(ctx.cfg, "mode", "pretrain") == "continue" else m.momentum
    if m.momentum_schedule == "constant":
        return float(start)
    if m.momentum_schedule != "cosine":
        raise ConfigError(f"method.momentum_schedule={m.momentum_schedule!r}; use cosine or constant")
    return cosine_momentum(start, m.momentum_end, ctx.run_step, ctx.total_steps)


def ema_update(teacher: Any, model: Any, sources: tuple[str, ...], m: float) -> None:
    """``t <- m t + (1 - m) o`` for every parameter of the teacher and its online twin (buffers
    untouched). ``m == 1`` changes nothing and costs nothing."""
    import torch

    if m >= 1.0:
        return
    t_params, o_params = [], []
    for s in sources:
        t_params += list(teacher[s].parameters())
        o_params += list(getattr(model, s).parameters())
    if len(t_params) != len(o_params):
        raise ConfigError("the momentum teacher and its online modules differ in layout")
    with torch.no_grad():
        torch._foreach_mul_(t_params, m)
        torch._foreach_add_(t_params, [o.detach() for o in o_params], alpha=1.0 - m)
