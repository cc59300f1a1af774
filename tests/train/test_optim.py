"""LARS/LARC against hand-written steps, schedules against closed forms (e2mc.train.optim)."""

import copy
import math

import pytest
import torch
from torch import nn

from e2mc.errors import ConfigError
from e2mc.train.optim import LARS, build_optimizer, build_scheduler, lr_factor, param_groups, scaled_lr


def _toy():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)  # weight (2, 3) gets LARS; bias (2,) is excluded
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]]))
        lin.bias.copy_(torch.tensor([0.3, -0.2]))
    return lin


def _grads(lin, gw, gb):
    lin.weight.grad = gw.clone()
    lin.bias.grad = gb.clone()


def test_lars_two_steps_match_hand_computation():
    lin = _toy()
    lr, wd, mom, eta = 0.5, 0.01, 0.9, 0.002
    opt = LARS(param_groups(lin, wd), lr=lr, weight_decay=wd, momentum=mom, eta=eta)
    w, b = lin.weight.detach().clone(), lin.bias.detach().clone()
    mu_w, mu_b = torch.zeros_like(w), torch.zeros_like(b)
    for gw, gb in [
        (torch.tensor([[0.1, 0.2, -0.3], [0.0, 0.4, 0.1]]), torch.tensor([1.0, -2.0])),
        (torch.tensor([[-0.2, 0.1, 0.0], [0.3, -0.1, 0.2]]), torch.tensor([0.5, 0.5])),
    ]:
        _grads(lin, gw, gb)
        opt.step()
        d = gw + wd * w  # weight: decay then trust ratio eta * |w| / |d|
        q = eta * math.sqrt((w**2).sum().item()) / math.sqrt((d**2).sum().item())
        mu_w = mom * mu_w + q * d
        w = w - lr * mu_w
        mu_b = mom * mu_b + gb  # bias: plain momentum SGD, no decay, no ratio
        b = b - lr * mu_b
        assert torch.allclose(lin.weight, w, atol=1e-6)
        assert torch.allclose(lin.bias, b, atol=1e-6)


def test_lars_plain_param_list_excludes_by_ndim_and_zero_norm():
    p, v = nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.ones(3))
    opt = LARS([p, v], lr=1.0, weight_decay=0.5, momentum=0.0)
    p.grad, v.grad = torch.ones(2, 2), torch.ones(3)
    opt.step()
    assert torch.allclose(p, -torch.ones(2, 2))  # zero weight norm: ratio 1
    assert torch.allclose(v, torch.zeros(3))  # 1-d: no decay, ratio 1


def test_larc_ratio_and_clip():
    w0 = torch.tensor([[3.0, 4.0]])  # |w| = 5
    g = torch.tensor([[0.6, 0.8]])  # |g| = 1
    for clip, lr in [(False, 0.1), (True, 0.1), (True, 1e-4)]:
        w = nn.Parameter(w0.clone())
        opt = build_optimizer("larc", [w], lr=lr, weight_decay=0.2, momentum=0.0, eta=0.02, clip=clip)
        w.grad = g.clone()
        opt.step()
        q = 0.02 * 5 / (1 + 0.2 * 5)  # apex LARC: eta |w| / (|g| + wd |w|) = 0.05
        if clip:
            q = min(q / lr, 1.0)
        assert torch.allclose(w, w0 - lr * q * (g + 0.2 * w0), atol=1e-7)


def test_param_groups_and_builders():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2, bias=False))
    model[2].weight.requires_grad_(False)
    groups = param_groups(model, 1e-4)
    assert [len(g["params"]) for g in groups] == [1, 3]
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["lars_exclude"]
    sgd = build_optimizer("sgd", model, lr=0.1, weight_decay=1e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[1]["weight_decay"] == 0.0
    adamw = build_optimizer("adamw", model, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    assert adamw.param_groups[0]["betas"] == (0.9, 0.95)
    plain = [model[0].weight, model[0].bias]  # a parameter list keeps identity and exclusion
    ol = build_optimizer("lars", plain, lr=0.1, weight_decay=1e-6)
    assert [g["params"][0] is p for g, p in zip(ol.param_groups, plain)] == [True, True]
    assert ol.param_groups[1]["lars_exclude"] and ol.param_groups[1]["weight_decay"] == 0.0
    larc = build_optimizer("larc", model, lr=0.1, weight_decay=1e-6)
    assert len(larc.param_groups) == 1 and larc.param_groups[0]["larc"]
    with pytest.raises(ConfigError, match="Unknown optimizer"):
        build_optimizer("rmsprop", model, lr=0.1, weight_decay=0)


def test_lars_state_dict_round_trip():
    def run(opt, lin, steps):
        for s in range(steps):
            _grads(lin, torch.full((2, 3), 0.1 * (s + 1)), torch.full((2,), -0.1 * s))
            opt.step()

    a = _toy()
    oa = LARS(param_groups(a, 1e-3), lr=0.3, weight_decay=1e-3)
    run(oa, a, 2)
    b = _toy()
    b.load_state_dict(a.state_dict())
    ob = LARS(param_groups(b, 1e-3), lr=0.3, weight_decay=1e-3)
    ob.load_state_dict(copy.deepcopy(oa.state_dict()))  # as if read back from disk
    run(oa, a, 2)
    run(ob, b, 2)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


@pytest.mark.parametrize(
    "kind,warm,final", [("constant", 0, 0.0), ("cosine", 0, 0.1), ("warmup_cosine", 3, 0.0), ("constant", 2, 0.0)]
)
def test_schedules_match_closed_form(kind, warm, final):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = build_scheduler(kind, opt, total_steps=11, warmup_steps=warm, final_lr_ratio=final)
    seen = []
    for _ in range(13):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for s, lr in enumerate(seen):
        if s < warm:
            ref = 2.0 * (s + 1) / warm
        elif kind == "constant":
            ref = 2.0
        else:
            t = min(s - warm, 11 - warm)
            ref = 2.0 * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * t / (11 - warm))))
        assert lr == pytest.approx(ref, abs=1e-12), (s, lr, ref)
    # hand-computed values (independent of the formula above)
    literal = {
        ("constant", 0): {0: 2.0, 12: 2.0},
        ("constant", 2): {0: 1.0, 1: 2.0, 2: 2.0},
        ("cosine", 0): {0: 2.0, 11: 0.2, 12: 0.2},
        # warm-up 2/3, 4/3, 2; then half way through the 8 cosine steps: 2 * 0.5 = 1
        ("warmup_cosine", 3): {0: 2 / 3, 1: 4 / 3, 2: 2.0, 3: 2.0, 7: 1.0, 11: 0.0},
    }[(kind, warm)]
    assert {s: seen[s] for s in literal} == pytest.approx(literal, abs=1e-12)


def test_scheduler_state_round_trip_and_errors():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    s1 = build_scheduler("cosine", opt, total_steps=10)
    for _ in range(4):
        opt.step()
        s1.step()
    opt2 = torch.optim.SGD([p], lr=1.0)
    s2 = build_scheduler("cosine", opt2, total_steps=10)
    s2.load_state_dict(s1.state_dict())
    opt2.load_state_dict(opt.state_dict())
    opt2.step()
    s2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(lr_factor("cosine", 5, 10))
    with pytest.raises(ConfigError, match="warmup_steps <= total_steps"):
        build_scheduler("warmup_cosine", opt, 10, warmup_steps=11)
    with pytest.raises(ConfigError, match="Unknown schedule"):
        build_scheduler("step", opt, 10)
    with pytest.raises(ConfigError, match="Unknown LR scaling"):
        scaled_lr(0.1, 64, rule="log")


@pytest.mark.parametrize(
    "rule,batch,base,expected",
    [
        ("none", 64, 256, 0.05),
        ("linear", 64, 256, 0.0125),
        ("sqrt", 64, 256, 0.025),
        ("linear", 64, 16, 0.2),
        ("sqrt", 64, 16, 0.1),
    ],
)
def test_trainer_scales_the_learning_rate(tmp_path, tiny, rule, batch, base, expected):
    """The LR a tiny run actually uses (optimiser groups, run_info, metrics.csv) against hand-computed
    values: lr 0.05 at global batch 64 with base_batch 256 is 0.05 * 64/256 (linear) or
    0.05 * sqrt(64/256) (sqrt)."""
    import yaml

    from e2mc.train.loop import Trainer
    from e2mc.train.run import read_metrics

    out = tmp_path / "r"
    t = Trainer(
        tiny(
            out,
            f"optim.lr_scaling={rule}",
            f"optim.base_batch={base}",
            f"optim.batch_size={batch}",
            "optim.lr=0.05",
            "optim.warmup_epochs=0",
            "train.max_steps=1",
            "train.probe_size=0",
        ),
        quiet=True,
    )
    assert [g["lr"] for g in t.optimizer.param_groups] == pytest.approx([expected] * len(t.optimizer.param_groups))
    assert yaml.safe_load((out / "config.yaml").read_text())["run_info"]["effective_lr"] == pytest.approx(expected)
    t.fit()
    rows = [r for r in read_metrics(out / "metrics.csv") if r["phase"] == "train"]
    assert len(rows) == 1 and float(rows[0]["lr"]) == pytest.approx(expected)
