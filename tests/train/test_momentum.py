"""The momentum-teacher helpers (``e2mc.methods.momentum``) against direct formulas."""

import math

import pytest
import torch
from torch import nn

from e2mc.errors import ConfigError
from e2mc.methods.base import StepContext
from e2mc.methods.momentum import copy_into, cosine_momentum, ema_update, momentum_at, teacher_copy


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
        self.projector = nn.Linear(6, 3)


def test_cosine_schedule_ends_and_middle():
    assert cosine_momentum(0.99, 1.0, 0, 100) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 1.0, 100, 100) == pytest.approx(1.0)
    assert cosine_momentum(0.99, 1.0, 50, 100) == pytest.approx(0.995)
    # MoCo v3's form: 1 - 0.5 (1 + cos(pi t / T)) (1 - m)
    assert cosine_momentum(0.996, 1.0, 30, 70) == pytest.approx(1 - 0.5 * (1 + math.cos(math.pi * 30 / 70)) * 0.004)
    assert cosine_momentum(0.9, 1.0, 5, 0) == 0.9


def test_teacher_is_a_frozen_copy_and_ema_follows_the_formula():
    torch.manual_seed(0)
    net = _Net()
    t = teacher_copy(net, ("backbone", "projector"))
    assert not any(p.requires_grad for p in t.parameters())
    assert list(t.state_dict()) == [f"backbone.{k}" for k in net.backbone.state_dict()] + [
        f"projector.{k}" for k in net.projector.state_dict()
    ]
    before = {k: v.clone() for k, v in t.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    ema_update(t, net, ("backbone", "projector"), 0.9)
    online = {
        **{f"backbone.{k}": v for k, v in net.backbone.state_dict().items()},
        **{f"projector.{k}": v for k, v in net.projector.state_dict().items()},
    }
    params = {n for n, _ in t.named_parameters()}
    for k, v in t.state_dict().items():
        want = 0.9 * before[k] + 0.1 * online[k] if k in params else before[k]  # buffers untouched
        torch.testing.assert_close(v, want, rtol=0, atol=1e-6)
    ema_update(t, net, ("backbone", "projector"), 1.0)  # m = 1: nothing moves
    copy_into(t, net, ("backbone", "projector"))
    for k, v in t.state_dict().items():
        assert torch.equal(v, online[k])


class _M:
    def __init__(self, **kw):
        self.__dict__.update(dict(momentum=0.99, continue_momentum=1.0, momentum_end=1.0, momentum_schedule="cosine"))
        self.__dict__.update(kw)


class _Cfg:
    def __init__(self, mode, **kw):
        self.mode, self.method = mode, _M(**kw)


def test_a_continuation_holds_the_teacher_unless_set():
    ctx = StepContext(run_step=3, total_steps=10, cfg=_Cfg("continue"))
    assert momentum_at(ctx) == 1.0
    ctx.cfg = _Cfg("continue", continue_momentum=0.996)
    assert momentum_at(ctx) == pytest.approx(cosine_momentum(0.996, 1.0, 3, 10))
    ctx.cfg = _Cfg("pretrain")
    assert momentum_at(ctx) == pytest.approx(cosine_momentum(0.99, 1.0, 3, 10))
    ctx.cfg = _Cfg("pretrain", momentum_schedule="constant")
    assert momentum_at(ctx) == 0.99
    ctx.cfg = _Cfg("pretrain", momentum_schedule="linear")
    with pytest.raises(ConfigError, match="cosine or constant"):
        momentum_at(ctx)


def test_a_teacher_of_a_missing_module_is_one_line():
    net = _Net()
    net.projector = None
    with pytest.raises(ConfigError, match="projector"):
        teacher_copy(net, ("backbone", "projector"))


def test_the_start_summary_states_the_teacher_momentum():
    """A user continuing a momentum method is told the teacher is held, and how to move it."""
    from e2mc.config import load_config
    from e2mc.methods import METHODS

    for name in [n for n, m in METHODS.items() if m.teacher and "momentum" in m.options]:  # not a frozen labeller
        cont = load_config(None, [f"method.name={name}", "mode=continue"])
        said = METHODS[name].describe(cont)
        assert said.startswith("teacher momentum 1, constant") and "method.continue_momentum" in said, (name, said)
        moved = load_config(None, [f"method.name={name}", "mode=continue", "method.continue_momentum=0.996"])
        assert METHODS[name].describe(moved) == "teacher momentum 0.996 -> 1 (cosine over the run)"
        pre = load_config(None, [f"method.name={name}"])
        assert METHODS[name].describe(pre).startswith(f"teacher momentum {pre.method.momentum:g} -> 1")
    assert METHODS["vicreg"].describe(load_config(None, ["method.name=vicreg"])) is None
