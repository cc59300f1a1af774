"""MoCo v3: the loss against the paper's equations written in numpy, and the method file's model
against a step written out by hand the way the official ``MoCo.forward`` runs it."""

import math

import numpy as np
import pytest
import torch

from e2mc.criteria import MoCoV3Loss
from e2mc.errors import ConfigError, CriterionInputError


def _np_ctr(q, k, t):
    """-mean_i log softmax_j(q_i . k_j / t)[i] * 2t over l2-normalised rows (paper, Algorithm 1)."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    logits = q @ k.T / t
    logits = logits - logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -np.mean(np.diag(logp)) * 2 * t


@pytest.mark.parametrize("t", [1.0, 0.2])
def test_loss_matches_numpy_and_stops_the_keys_gradient(t):
    rng = np.random.default_rng(3)
    q = [torch.tensor(rng.normal(size=(9, 5)), requires_grad=True) for _ in range(2)]
    k = [torch.tensor(rng.normal(size=(9, 5)), requires_grad=True) for _ in range(2)]
    out = MoCoV3Loss(temperature=t)(q, k)
    qn, kn = [x.detach().numpy() for x in q], [x.detach().numpy() for x in k]
    want = _np_ctr(qn[0], kn[1], t) + _np_ctr(qn[1], kn[0], t)
    assert float(out["loss"].detach()) == pytest.approx(want, rel=1e-6)
    out["loss"].backward()
    assert k[0].grad is None and k[1].grad is None
    assert q[0].grad.abs().sum() > 0


def test_bad_temperature_and_shapes_are_one_line():
    with pytest.raises(ConfigError, match="> 0"):
        MoCoV3Loss(temperature=0)
    with pytest.raises(CriterionInputError, match="same shape"):
        MoCoV3Loss()([torch.randn(6, 4)] * 2, [torch.randn(6, 3)] * 2)
    from e2mc.config import load_config
    from e2mc.methods import METHODS

    crit = METHODS["mocov3"].build_criterion(load_config(None, ["method.name=mocov3", "method.moco_t=0.2"]))
    assert isinstance(crit, MoCoV3Loss) and crit.temperature == 0.2


def _cfg(*sets):
    from e2mc.config import load_config

    return load_config(None, ["method.name=mocov3", "model.init=random:resnet_mini:8-8-16", *sets])


def _mlp_layout(seq):
    return [(type(m).__name__, getattr(m, "bias", None) is not None, getattr(m, "affine", None)) for m in seq]


def test_heads_follow_the_official_build_mlp():
    from e2mc.methods import METHODS

    m = METHODS["mocov3"]
    resnet = m.build_heads(2048, m.resolve_head_sizes(2048))
    assert m.resolve_head_sizes(2048) == {
        "proj_hidden": 4096, "proj_dim": 256, "proj_layers": 2, "pred_hidden": 4096, "pred_last_bn": 0
    }  # fmt: skip
    lin, bn, relu = ("Linear", False, None), ("BatchNorm1d", True, True), ("ReLU", False, None)
    last_bn = ("BatchNorm1d", False, False)  # affine=False: no weight, no bias
    assert _mlp_layout(resnet["projector"]) == [lin, bn, relu, lin, last_bn]
    assert _mlp_layout(resnet["predictor"]) == [lin, bn, relu, lin]
    vit = m.build_heads(384, m.resolve_head_sizes(384, proj_layers=3, pred_last_bn=1))
    assert _mlp_layout(vit["projector"]) == [lin, bn, relu, lin, bn, relu, lin, last_bn]
    assert _mlp_layout(vit["predictor"]) == [lin, bn, relu, lin, last_bn]
    assert vit["projector"][0].weight.shape == (4096, 384) and vit["projector"][6].weight.shape == (256, 4096)
    back = m.head_sizes_from_weights({h: mod.state_dict() for h, mod in vit.items()})
    assert back == {"proj_layers": 3, "proj_dim": 256, "proj_hidden": 4096, "pred_hidden": 4096, "pred_last_bn": 1}


def test_a_step_equals_the_official_forward_written_out():
    """Momentum update BEFORE the keys, per-view networks, symmetric InfoNCE * 2T; the add-on gets z."""
    from e2mc.methods import METHODS, StepContext
    from e2mc.models.model import SSLModel

    torch.manual_seed(0)
    spec, cfg = METHODS["mocov3"], _cfg("method.moco_t=0.5")
    model = SSLModel.build("mocov3", "resnet_mini:8-8-16", proj_hidden=32, proj_dim=8, pred_hidden=16)
    with torch.no_grad():  # an online network that differs from its teacher
        for p in (*model.backbone.parameters(), *model.projector.parameters()):
            p.add_(0.1 * torch.randn_like(p))
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    x1, x2 = torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16)
    ctx = StepContext(model=model, cfg=cfg, run_step=3, total_steps=10)
    m = 1 - 0.5 * (1 + math.cos(math.pi * 3 / 10)) * (1 - 0.99)  # main_moco.py's adjust_moco_momentum

    seen = []

    class Probe(torch.nn.Module):  # an add-on that records what it is given
        def forward(self, zs):
            seen.append(zs)
            return {"loss": torch.zeros(())}

    spec.before_forward(ctx)
    out = model([x1, x2])
    terms = spec.compute_loss(out, spec.build_criterion(cfg), Probe(), ctx)

    # the official order, by hand, on a copy of the start state
    twin = SSLModel.build("mocov3", "resnet_mini:8-8-16", proj_hidden=32, proj_dim=8, pred_hidden=16)
    twin.load_state_dict(ref)
    online = lambda x: twin.predictor(twin.projector(twin.backbone(x)))  # noqa: E731
    q1, q2 = online(x1), online(x2)
    with torch.no_grad():
        t = twin.momentum_encoder
        for name in ("backbone", "projector"):
            for pt, po in zip(t[name].parameters(), getattr(twin, name).parameters()):
                pt.data = pt.data * m + po.data * (1.0 - m)
        k1, k2 = t.projector(t.backbone(x1)), t.projector(t.backbone(x2))

    def ctr(q, k, temp=0.5):
        q, k = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(k, dim=1)
        return torch.nn.functional.cross_entropy(q @ k.T / temp, torch.arange(q.shape[0])) * 2 * temp

    torch.testing.assert_close(terms["loss"], ctr(q1, k2) + ctr(q2, k1))
    for key, v in twin.state_dict().items():  # teacher weights and BN statistics (its own, per view)
        torch.testing.assert_close(model.state_dict()[key], v, msg=key)
    assert len(seen) == 1 and seen[0][0].shape == (6, 8)  # the projector output z, before the predictor
    torch.testing.assert_close(seen[0][0], out["z"][0])
    assert not torch.allclose(out["z"][0], out["p"][0])


def test_official_temperature_by_arch_unless_set():
    from e2mc.methods import METHODS, StepContext
    from e2mc.models.model import SSLModel

    spec = METHODS["mocov3"]
    model = SSLModel.build("mocov3", "resnet_mini:8-8-16", proj_hidden=16, proj_dim=8, pred_hidden=16)
    out = model([torch.randn(4, 3, 16, 16)] * 2)
    crit = spec.build_criterion(_cfg())
    spec.base_loss(out, crit, out["z"], StepContext(model=model, cfg=_cfg()))
    assert crit.temperature == 1.0
    model.arch = "timm:vit_small_patch16_224:num_heads=12"
    spec.base_loss(out, crit, out["z"], StepContext(model=model, cfg=_cfg()))
    assert crit.temperature == 0.2  # --moco-t=.2 of the ViT runs
    crit = spec.build_criterion(_cfg("method.moco_t=0.7"))
    spec.base_loss(out, crit, out["z"], StepContext(model=model, cfg=_cfg("method.moco_t=0.7")))
    assert crit.temperature == 0.7


def test_views_follow_main_moco():
    from e2mc.data.views import view_config

    v = view_config("mocov3", 224)
    got = (v.n_large, v.n_small, v.large_size, v.large_scale, v.jitter, v.jitter_p, v.gray_p)
    assert got == (2, 0, 224, (0.08, 1.0), (0.4, 0.4, 0.2, 0.1), 0.8, 0.2)
    assert (v.blur_p, v.blur_sigma, v.solarize_p, v.flip_p, v.interpolation) == (
        (1.0, 0.1),
        (0.1, 2.0),
        (0.0, 0.2),
        0.5,
        "bilinear",
    )


def test_e2mc_files_keep_the_momentum_encoder(tmp_path):
    """An e2mc checkpoint holds the teacher slot (``layouts.HEADS`` lists the teachers): loading it
    gives the file's teacher back, not a copy of the online network."""
    from e2mc.models.checkpoints import load_model
    from e2mc.models.export import export_model, save_backbone_safetensors
    from e2mc.models.model import SSLModel

    model = SSLModel.build("mocov3", "resnet_mini:8-8-16", proj_hidden=16, proj_dim=8, pred_hidden=16)
    with torch.no_grad():
        for p in model.momentum_encoder.parameters():
            p.add_(1.0)
    path = export_model(model, None, tmp_path / "m.pt", "e2mc")
    back, report = load_model(str(path))
    assert report.heads == ["projector", "predictor"] and not report.notes
    n = len(model.momentum_encoder.state_dict())
    assert report.teachers == {"momentum_encoder": {"tensors": n, "loaded": True}}
    save_backbone_safetensors(model, tmp_path / "b.safetensors")  # a backbone alone: the teacher is a copy
    _, fresh = load_model(str(tmp_path / "b.safetensors"), method="mocov3")
    assert fresh.teachers == {"momentum_encoder": {"tensors": n, "loaded": False}}
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_timm_arch_options_build_moco_v3s_vit_small():
    from e2mc.models.backbones import build_backbone, canonical_arch

    net = build_backbone("timm:vit_small_patch16_224:num_heads=12,img_size=32")
    assert net.blocks[0].attn.num_heads == 12 and net.patch_embed.img_size == (32, 32)
    assert canonical_arch("timm:vit_small_patch16_224:num_heads=12") == "timm:vit_small_patch16_224"
    with pytest.raises(ConfigError, match="key=value"):
        build_backbone("timm:vit_small_patch16_224:num_heads")
