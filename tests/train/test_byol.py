"""BYOL as an e2mc method: the target network (a frozen copy held by the model), its EMA after
every step (the official cosine schedule), views one at a time, and the target kept in e2mc's
own files."""

import math

import torch

from e2mc.methods import METHODS
from e2mc.models import load_model
from e2mc.models.model import SSLModel
from e2mc.train.loop import Trainer

SIZES = dict(proj_hidden=32, proj_dim=16, pred_hidden=24)
HEADS = "model.head_sizes={proj_hidden: 32, proj_dim: 16, pred_hidden: 24}"


def _model():
    torch.manual_seed(0)
    return SSLModel.build("byol", "resnet_mini:8-16-32", cifar_stem=True, **SIZES)


def test_target_is_a_frozen_copy_out_of_the_optimiser():
    m = _model()
    keys = m.state_dict()
    online = [k for k in keys if k.startswith(("backbone.", "projector."))]
    assert [k for k in keys if k.startswith("target.")] == ["target." + k for k in online]
    assert all(torch.equal(keys["target." + k], keys[k]) for k in online)
    assert not any(p.requires_grad for p in m.target.parameters())
    trainable = {id(p) for p in m.parameters() if p.requires_grad}
    assert trainable.isdisjoint(id(p) for p in m.target.parameters())
    assert METHODS["byol"].default_head_sizes(2048) == {"proj_hidden": 4096, "proj_dim": 256, "pred_hidden": 4096}


def test_each_view_alone_and_the_target_in_train_mode():
    m = _model().train()
    g = torch.Generator().manual_seed(1)
    v1, v2 = torch.randn(6, 3, 8, 8, generator=g), torch.randn(6, 3, 8, 8, generator=g) * 3 + 1
    before = m.target["backbone"].bn1.running_mean.clone()
    out = m([v1, v2])
    alone = _model().train()([v2])  # the same weights: view 2's BatchNorm statistics are its own
    for k in ("z", "p", "t"):
        torch.testing.assert_close(out[k][1], alone[k][0])
    assert not out["t"][0].requires_grad and out["p"][0].requires_grad
    assert not torch.equal(m.target["backbone"].bn1.running_mean, before)  # its own statistics move


def _run(tmp_path, tiny, *extra):
    cfg = tiny(tmp_path / "run", "method.name=byol", HEADS, "train.max_steps=3", "train.probe_size=0", *extra)
    t = Trainer(cfg, quiet=True)
    real, seen = t.train_step, []

    def step(images, **kw):
        terms = real(images, **kw)
        seen.append({k: v.detach().clone() for k, v in t.model.state_dict().items()})
        return terms

    t.train_step = step
    first = {k: v.detach().clone() for k, v in t.model.state_dict().items()}
    t.fit()
    return t, first, seen


def test_target_follows_the_official_ema(tmp_path, tiny):
    t, first, seen = _run(tmp_path, tiny)
    assert len(seen) == t.total_steps == 3
    params = {"target." + n for n, _ in t.model.named_parameters() if n.startswith(("backbone.", "projector."))}
    want = {k: first[k] for k in params}
    for k_step, sd in enumerate(seen):  # official target_ema: 1 - (1 - base) (cos(pi k / K) + 1) / 2
        m = 1 - (1 - 0.996) * (math.cos(math.pi * k_step / 3) + 1) / 2
        want = {k: m * v + (1 - m) * sd[k[len("target.") :]] for k, v in want.items()}
        for k in params:
            torch.testing.assert_close(sd[k], want[k], rtol=1e-5, atol=1e-7)
    assert not torch.equal(seen[-1]["target.projector.0.weight"], first["target.projector.0.weight"])
    # the run checkpoint holds the target; loading it keeps it (no copy of the online network)
    model, report = load_model(tmp_path / "run" / "checkpoints" / "last.pt")
    assert not any("momentum teacher" in n for n in report.notes), report.notes
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, seen[-1][k], rtol=0, atol=0)


def test_a_continuation_holds_the_target_unless_set(tmp_path, tiny):
    t, first, seen = _run(tmp_path / "a", tiny, "mode=continue")
    held = [k for k in first if k.startswith("target.") and k.endswith("weight")]
    assert all(torch.equal(seen[-1][k], first[k]) for k in held)  # momentum 1: not moved
    t, first, seen = _run(tmp_path / "b", tiny, "mode=continue", "method.continue_momentum=0.9")
    assert not torch.equal(seen[-1]["target.projector.0.weight"], first["target.projector.0.weight"])


def test_every_addon_sees_the_online_projection(tmp_path, tiny):
    """``--addon e2mc|vc|uniformity|mmcr|none``: a short continue each; the add-on's input is the
    online projector output z of the two views (not p, not the target's t)."""
    from e2mc.criteria import ADDONS

    for name in ADDONS:
        cfg = tiny(tmp_path / name, "method.name=byol", HEADS, "train.max_steps=1", "train.probe_size=0",
                   f"addon.name={name}", mode="continue")  # fmt: skip
        t = Trainer(cfg, quiet=True)
        seen = {}
        t.addon.register_forward_pre_hook(lambda mod, args, seen=seen: seen.setdefault("addon", args[0]))
        t.model.register_forward_hook(lambda mod, args, out, seen=seen: seen.setdefault("out", out))
        t.fit()
        assert [a is b for a, b in zip(seen["addon"], seen["out"]["z"])] == [True, True], name
        rows = (tmp_path / name / "metrics.csv").read_text().splitlines()
        header = rows[0].split(",")
        first = next(r.split(",") for r in rows[1:] if r.split(",")[header.index("phase")] == "train")
        addon = float(first[header.index("addon")])
        assert math.isfinite(addon) and (addon == 0.0) == (name == "none"), (name, addon)


def test_a_stopped_run_resumes_bit_exact_with_its_target(tmp_path, tiny):
    """Stopped mid-epoch (as SIGTERM does) and resumed: the weights, the target and its BatchNorm
    statistics equal an uninterrupted run's (the EMA's schedule position is the run step)."""
    sets = ["method.name=byol", HEADS, "data.limit=128", "optim.batch_size=32", "train.epochs=2"]
    sets += ["train.probe_size=0", "train.deterministic=true", "data.num_workers=0"]
    Trainer(tiny(tmp_path / "ref", *sets), quiet=True).fit()
    t = Trainer(tiny(tmp_path / "run", *sets), quiet=True)
    real = t.train_step

    def step(*args, **kw):
        out = real(*args, **kw)
        t.stop_requested = t.global_step + 1 == 3
        return out

    t.train_step = step
    t.fit()
    assert t.global_step == 3
    resumed = Trainer(tiny(tmp_path / "run", *sets, "out.resume=true"), quiet=True)
    resumed.fit()
    assert resumed.global_step == 8
    a, b = (load_model(tmp_path / r / "checkpoints" / "last.pt")[0].state_dict() for r in ("ref", "run"))
    assert sorted(a) == sorted(b) and any(k.startswith("target.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
