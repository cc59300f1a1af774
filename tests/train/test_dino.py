"""The DINO method file (``e2mc.methods.dino``): head layout, teacher, schedules, hooks, the centre,
and the continuation defaults, each against the official code's formulas written out here."""

import csv
import math

import numpy as np
import pytest
import torch
from torch import nn

from e2mc.config import load_config
from e2mc.errors import ConfigError
from e2mc.methods import METHODS, StepContext
from e2mc.methods.dino import dino_head, teacher_temp
from e2mc.models.model import SSLModel

DINO = METHODS["dino"]
SIZES = ["model.head_sizes={hidden: 32, bottleneck: 8, out: 64}"]


def cfg(*sets, mode="pretrain"):
    return load_config(None, ["method.name=dino", "addon.name=none", f"mode={mode}", *SIZES, *sets])


def model():
    torch.manual_seed(0)
    return SSLModel.build("dino", "resnet_mini:8-8-16", hidden=32, bottleneck=8, out=64)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.nn.utils.weight_norm: the official module
def test_head_keys_sizes_and_weight_norm_match_the_official_module():
    h = dino_head(16, 32, 8, 64)
    assert list(h.state_dict()) == [
        "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp.4.weight", "mlp.4.bias",
        "last_layer.weight_g", "last_layer.weight_v",
    ]  # fmt: skip
    assert [type(m).__name__ for m in h.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    assert h.last_layer.weight_g.shape == (64, 1) and not h.last_layer.weight_g.requires_grad
    assert torch.equal(h.last_layer.weight_g, torch.ones(64, 1))
    sizes = DINO.head_sizes_from_weights({"head": h.state_dict()})
    assert sizes == {"out": 64, "bottleneck": 8, "nlayers": 3, "hidden": 32, "use_bn": 0}
    bn = DINO.build_heads(16, {**sizes, "use_bn": 1})["head"]
    assert DINO.head_sizes_from_weights({"head": bn.state_dict()})["use_bn"] == 1
    # the last layer computes what torch's old weight_norm (the official module) computes
    ref = nn.utils.weight_norm(nn.Linear(8, 64, bias=False))
    with torch.no_grad():
        ref.weight_g.copy_(torch.rand(64, 1) + 0.5)
        h.last_layer.load_state_dict({"weight_g": ref.weight_g.detach(), "weight_v": ref.weight_v.detach()})
    x = torch.randn(5, 8)
    torch.testing.assert_close(h.last_layer(x), ref(x))
    assert DINO.default_head_sizes(384) == {"hidden": 2048, "bottleneck": 256, "out": 65536, "nlayers": 3, "use_bn": 0}
    assert DINO.default_head_sizes(2048)["out"] == 65536
    assert DINO.default_head_sizes(32) == {"hidden": 128, "bottleneck": 32, "out": 2048, "nlayers": 3, "use_bn": 0}


def test_the_teacher_sees_the_two_global_crops_only():
    m = model()
    with torch.no_grad():
        for p in m.teacher.parameters():
            p.add_(0.1)  # a teacher that differs from the student
    g = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    for local in ([torch.randn(4, 3, 8, 8) for _ in range(3)], [torch.randn(4, 3, 16, 16) for _ in range(3)]):
        out = m(g + local)  # local crops of another size (2 groups), or of the same size (1 group)
        assert len(out["s"]) == len(out["z"]) == 5 and len(out["t"]) == 2
        with torch.no_grad():
            want = m.teacher["head"](m.teacher["backbone"](torch.cat(g)))
        torch.testing.assert_close(torch.cat(out["t"]), want)
        assert not out["t"][0].requires_grad


def test_teacher_temperature_is_the_official_per_epoch_linspace_and_a_continuation_starts_at_the_end():
    c = cfg()
    sched = np.concatenate((np.linspace(0.04, 0.07, 30), np.ones(70) * 0.07))  # main_dino.py's DINOLoss
    assert [teacher_temp(c, e) for e in range(100)] == pytest.approx(list(sched))
    assert teacher_temp(cfg(mode="continue"), 0) == 0.07
    assert teacher_temp(cfg("method.continue_temp_warmup=true", mode="continue"), 0) == pytest.approx(0.04)
    assert teacher_temp(cfg("method.warmup_teacher_temp_epochs=0"), 0) == 0.07


def _official_clip(model, clip):
    """utils.clip_gradients, transcribed."""
    for p in model.parameters():
        if p.grad is not None:
            norm = p.grad.data.norm(2)
            coef = clip / (norm + 1e-6)
            if coef < 1:
                p.grad.data.mul_(coef)


def _backward(m, c):
    state = DINO.build_state(c, m, 1, 4, print)
    views = [torch.randn(4, 3, 16, 16) for _ in range(2)] + [torch.randn(4, 3, 8, 8) for _ in range(2)]
    terms = DINO.compute_loss(m(views), DINO.build_criterion(c), DINO.build_addon(c), StepContext(m, state, 0, c, 10))
    (terms["loss"] * 100).backward()  # large gradients: some parameters are clipped, some not
    return state


@pytest.mark.parametrize("mode", ["pretrain", "continue"])
def test_per_parameter_clip_and_the_frozen_last_layer(mode):
    c = cfg(mode=mode)
    m = model()
    state = _backward(m, c)
    ref = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    refm = model()
    for n, p in refm.named_parameters():
        p.grad = ref.get(n)
    _official_clip(refm, 3.0)
    DINO.after_backward(StepContext(m, state, 0, c, 10))
    got = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    clipped = [n for n, g in ref.items() if g.norm() > 3.0]
    assert clipped and len(clipped) < len(ref)
    frozen = mode == "pretrain"  # epoch 0 < freeze_last_layer 1; a continuation trains it (0)
    assert ("head.last_layer.weight_v" not in got) == frozen
    for n, p in refm.named_parameters():
        if n in got:
            torch.testing.assert_close(got[n], p.grad, rtol=1e-6, atol=1e-8)
    state.epoch = 1  # epoch_start sets it: no longer frozen
    m.zero_grad()
    _backward(m, c)
    DINO.epoch_start(StepContext(m, state, 0, c, 10), 1)
    DINO.after_backward(StepContext(m, state, 0, c, 10))
    assert m.head.last_layer.weight_v.grad is not None


def test_fp16_with_the_clip_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="bf16 or fp32"):
        DINO.build_criterion(cfg("train.precision=fp16"))
    DINO.build_criterion(cfg("train.precision=fp16", "method.clip_grad=0"))


@pytest.mark.parametrize("mode", ["pretrain", "continue"])
def test_teacher_ema_and_the_held_teacher_of_a_continuation(mode):
    c = cfg(mode=mode)
    m = model()
    before = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    with torch.no_grad():
        for p in m.head.parameters():
            p.add_(1.0)
    DINO.after_step(StepContext(m, None, 3, c, 10))
    k = "head.mlp.0.weight"
    mom = 1 - (1 - 0.996) * (math.cos(math.pi * 3 / 10) + 1) / 2  # utils.cosine_scheduler(0.996, 1)
    want = before[k] if mode == "continue" else mom * before[k] + (1 - mom) * m.head.mlp[0].weight.detach()
    torch.testing.assert_close(m.teacher.state_dict()[k], want)


def test_the_centre_updates_as_the_ema_and_its_state_round_trips():
    c = cfg()
    m = model()
    state = _backward(m, c)
    assert state.known and state.center.abs().sum() > 0  # 0.1 x the batch mean of the teacher logits
    saved = DINO.save_state(state, 4)
    again = DINO.build_state(cfg(mode="continue"), model(), 1, 4, print)
    assert not again.known  # a continuation's centre is unknown until a file or the data gives it
    DINO.load_state(again, saved, 4, print)
    assert again.known and torch.equal(again.center, state.center)
    said = []
    DINO.load_state(again, {"center": torch.zeros(1, 7)}, 4, said.append)
    assert not again.known and "re-estimated" in said[0]


def test_a_missing_centre_is_estimated_from_the_teachers_mean_logits_of_center_batches():
    c = cfg("method.center_batches=3", mode="continue")
    m = model().train()
    state = DINO.build_state(c, m, 1, 4, print)
    batches = [[torch.randn(4, 3, 16, 16) for _ in range(2)] + [torch.randn(4, 3, 8, 8)] for _ in range(5)]
    bn = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    used = []

    def feed():
        for b in batches:
            used.append(1)
            yield b

    DINO.prepare(StepContext(m, state, 0, c, 10), feed())
    assert len(used) == 3 and state.known
    for k, v in m.teacher.state_dict().items():  # BN running statistics as they were
        assert torch.equal(v, bn[k]), k
    with torch.no_grad():  # train mode: batch statistics, as the training step's teacher
        means = [m.teacher["head"](m.teacher["backbone"](torch.cat(b[:2]))).mean(0, keepdim=True) for b in batches[:3]]
    torch.testing.assert_close(state.center, sum(means) / 3)
    DINO.prepare(StepContext(m, state, 0, c, 10), iter(()))  # known: nothing more


def test_init_state_takes_the_files_centre_unless_the_heads_are_fresh():
    class Report:
        method_state = {"center": torch.full((1, 64), 0.5), "known": True}
        heads_built = []

    c, log = cfg(mode="continue"), []
    state = DINO.build_state(c, model(), 1, 4, print)
    DINO.init_state(state, Report(), c, log.append)
    assert state.known and float(state.center.mean()) == 0.5
    Report.heads_built = ["head"]
    state = DINO.build_state(c, model(), 1, 4, print)
    DINO.init_state(state, Report(), c, log.append)
    assert not state.known
    state = DINO.build_state(c, model(), 1, 4, print)
    DINO.init_state(state, None, c, log.append)
    assert not state.known and "re-estimated from up to 8 batches" in log[-1]  # center_batches' default


def test_a_continuation_without_a_centre_estimates_it_before_the_first_step(tmp_path, tiny):
    from e2mc.models.export import export_model
    from e2mc.train.loop import Trainer
    from e2mc.train.run import load_checkpoint

    src = tmp_path / "dino.pt"
    export_model(model(), None, src, "e2mc")  # an e2mc file without a centre
    c = tiny(
        tmp_path / "run",
        f"model.init={src}",
        "method.name=dino",
        "addon.name=none",
        "model.head_sizes={}",
        "optim.batch_size=16",
        "method.center_batches=2",
        "train.max_steps=1",
        mode="continue",
    )
    t = Trainer(c, quiet=True)
    assert not t.state.method_state.known  # the file has no centre
    pulled = []
    real = t._prepare_batches

    def counted():
        for b in real():
            pulled.append(1)
            yield b

    t._prepare_batches = counted
    t.fit()
    assert len(pulled) == 2
    st = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert st["dino_center"]["known"] is True and st["dino_center"]["center"].abs().sum() > 0


def test_the_addon_sees_the_bottleneck_output_of_the_two_global_crops():
    class Seen(nn.Module):
        def forward(self, views):
            self.views = views
            return {"loss": torch.zeros(())}

    c, m, seen = cfg(), model(), Seen()
    out = m([torch.randn(4, 3, 16, 16) for _ in range(2)] + [torch.randn(4, 3, 8, 8) for _ in range(2)])
    DINO.compute_loss(out, DINO.build_criterion(c), seen, StepContext(m, None, 0, c, 10))
    assert len(seen.views) == 2 and all(v is z for v, z in zip(seen.views, out["z"][:2]))
    assert seen.views[0].shape == (4, 8)  # the bottleneck (before L2 normalisation), not the 64 logits


def test_a_vit_runs_multi_crop_with_the_teacher():
    torch.manual_seed(0)
    m = SSLModel.build("dino", "timm:vit_tiny_patch16_224", hidden=32, bottleneck=8, out=64)
    assert DINO.default_head_sizes(m.backbone.out_dim)["bottleneck"] == 192  # 192 features: scaled down
    out = m([torch.randn(2, 3, 32, 32) for _ in range(2)] + [torch.randn(2, 3, 16, 16) for _ in range(2)])
    assert [t.shape for t in out["t"]] == [(2, 64)] * 2 and len(out["s"]) == 4
    assert "teacher.backbone.pos_embed" in m.state_dict()


def test_fresh_heads_are_warmed_up_then_the_teacher_copied_and_the_centre_estimated(tmp_path, tiny):
    from e2mc.models.export import save_backbone_safetensors
    from e2mc.train.loop import Trainer

    src = tmp_path / "backbone.safetensors"
    save_backbone_safetensors(model(), src)  # a backbone alone: DINO's heads are built fresh
    c = tiny(
        tmp_path / "run",
        f"model.init={src}",
        "method.name=dino",
        "addon.name=none",
        "model.head_sizes={hidden: 32, bottleneck: 8, out: 64}",
        "optim.batch_size=16",
        "method.center_batches=2",
        "train.head_warmup_steps=2",
        "train.max_steps=1",
        mode="continue",
    )
    t = Trainer(c, quiet=True)
    assert t.heads_built == ["head"] and not t.state.method_state.known
    calls, real_warmup, real_prepare = [], DINO.after_warmup, DINO.prepare

    def after_warmup(ctx):
        real_warmup(ctx)
        calls.append("after_warmup")
        for k, v in ctx.model.head.state_dict().items():  # the teacher is the warmed-up head
            assert torch.equal(ctx.model.teacher["head"].state_dict()[k], v), k

    def prepare(ctx, batches):
        calls.append("prepare")
        real_prepare(ctx, batches)

    t.method.after_warmup, t.method.prepare = after_warmup, prepare  # instance attributes: this test only
    try:
        t.fit()
    finally:
        del t.method.after_warmup, t.method.prepare
    assert calls == ["after_warmup", "prepare"] and t.state.method_state.known
    with open(tmp_path / "run" / "metrics.csv") as f:
        phases = [row["phase"] for row in csv.DictReader(f)]
    assert phases.count("warmup") == 2 and "train" in phases


@pytest.mark.parametrize("k", [8, 4, 0])
def test_local_crops_number_sets_the_local_views_and_their_probabilities(tmp_path, tiny, k):
    """main_dino.py's ``--local_crops_number``: 2 global crops (blur 1.0 / 0.1, solarise 0 / 0.2 at
    large sizes) + k local crops (blur 0.5); the trainer's views follow it."""
    from e2mc.data.views import view_config
    from e2mc.train.loop import Trainer

    fields = DINO.view_fields(cfg(f"method.local_crops_number={k}"))
    v = view_config("dino", 224, fields)
    assert v.n_large == 2 and v.n_small == k and v.crop_specs()[2:] == [(96, (0.05, 0.4))] * k
    assert v.per_view(v.blur_p, "blur_p") == [1.0, 0.1] + [0.5] * k
    assert v.per_view(v.solarize_p, "solarize_p") == [0.0, 0.2] + [0.0] * k
    assert fields["n_small"] == k and DINO.view_recipe["n_small"] == 8  # the declared recipe is unchanged
    sets = ["method.name=dino", "addon.name=none", *SIZES, f"method.local_crops_number={k}", "optim.batch_size=16"]
    t = Trainer(tiny(tmp_path / "r", *sets, "train.max_steps=1"), quiet=True)
    views = t.views(torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8))
    assert [tuple(x.shape[-2:]) for x in views] == [(16, 16)] * 2 + [(8, 8)] * k
