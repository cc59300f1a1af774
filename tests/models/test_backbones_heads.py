"""Backbones, heads (published key names/shapes) and SSLModel's forward contract."""

import pytest
import torch

from e2mc.errors import ConfigError
from e2mc.methods.simsiam import simsiam_predictor, simsiam_projector
from e2mc.methods.swav import swav_head, swav_prototypes
from e2mc.methods.vicreg import vicreg_projector
from e2mc.models.backbones import build_backbone
from e2mc.models.heads import build_heads, default_head_sizes
from e2mc.models.model import SSLModel

from .conftest import simsiam_head_shapes, swav_shapes, vicreg_projector_shapes


def shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_torchvision_backbone_names_and_cifar_stem():
    with torch.device("meta"):
        net = build_backbone("resnet50")
        cifar = build_backbone("resnet18", cifar_stem=True)
    assert net.out_dim == 2048 and cifar.out_dim == 512
    assert not any(k.startswith("fc.") for k in net.state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer4.2.conv3.weight"} <= set(net.state_dict())
    assert net.conv1.kernel_size == (7, 7)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1) and cifar.conv1.bias is None
    assert isinstance(cifar.maxpool, torch.nn.Identity)


def test_resnet_mini_forward_and_width_spec():
    torch.manual_seed(0)
    net = build_backbone("resnet_mini:8-16-24")
    assert net.out_dim == 24 and net(torch.randn(3, 3, 16, 16)).shape == (3, 24)
    assert build_backbone("resnet_mini").out_dim == 128
    with pytest.raises(ConfigError):
        build_backbone("resnet_mini:8-x")
    with pytest.raises(ConfigError, match="unknown arch"):
        build_backbone("resnet7")


def test_timm_backbone_small_images():
    net = build_backbone("timm:vit_tiny_patch16_224", img_size=32)
    assert net.out_dim == 192 and net(torch.randn(2, 3, 32, 32)).shape == (2, 192)


def test_heads_match_published_layouts():
    with torch.device("meta"):  # real sizes, no memory
        assert shapes(vicreg_projector(2048, (8192, 8192, 8192))) == vicreg_projector_shapes(2048, (8192,) * 3)
        swav = {f"projection_head.{k}": v for k, v in shapes(swav_head(2048, 2048, 128)).items()}
        swav["prototypes.weight"] = tuple(swav_prototypes(128, 3000).weight.shape)
        assert swav == swav_shapes()
        proj, pred = simsiam_head_shapes()
        assert shapes(simsiam_projector(2048, 2048, 2048)) == proj
        assert shapes(simsiam_predictor(2048, 512)) == pred


def test_default_head_sizes_scale_with_backbone():
    assert default_head_sizes("vicreg", 2048) == {"projector": [8192] * 3}
    assert default_head_sizes("vicreg", 512) == {"projector": [2048] * 3}
    assert default_head_sizes("swav", 2048) == {"hidden": 2048, "out": 128, "prototypes": 3000}
    assert default_head_sizes("simsiam", 512) == {"proj_hidden": 512, "proj_dim": 2048, "pred_hidden": 512}
    heads = build_heads("simsiam", 16, proj_dim=40)
    assert heads["predictor"][0].weight.shape == (10, 40) and heads["prototypes"] is None
    with pytest.raises(ConfigError, match="unknown head size"):
        build_heads("vicreg", 16, hidden=3)


def test_forward_batches_same_resolution_views_together():
    """Concatenated pass == backbone on the concatenation (BN in train mode sees all crops)."""
    torch.manual_seed(0)
    model = SSLModel.build("swav", "resnet_mini:8-8-16", hidden=16, out=8, prototypes=5)
    views = [torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16), torch.randn(3, 3, 8, 8)]
    out = model(views)
    torch.manual_seed(0)
    ref = SSLModel.build("swav", "resnet_mini:8-8-16", hidden=16, out=8, prototypes=5)
    big = ref.backbone(torch.cat(views[:2]))
    z = ref.projector(big)
    assert torch.allclose(torch.cat(out["features"][:2]), big, atol=1e-6)
    assert torch.allclose(torch.cat(out["z"][:2]), z, atol=1e-6)
    scores = torch.nn.functional.normalize(z, dim=1) @ ref.prototypes.weight.T
    assert torch.allclose(torch.cat(out["scores"][:2]), scores, atol=1e-5)
    assert [f.shape[0] for f in out["features"]] == [4, 4, 3] and "p" not in out
    # separate passes differ in train mode (BN statistics per view): the batching is real
    sep = SSLModel.build("swav", "resnet_mini:8-8-16", hidden=16, out=8, prototypes=5)
    sep.load_state_dict(ref.state_dict())
    sep.concat_views = False
    assert not torch.allclose(torch.cat(sep(views[:2])["features"]), big, atol=1e-4)


def test_sslmodel_attributes_and_embed():
    model = SSLModel.build("simsiam", "resnet_mini:8-8-16")
    assert (model.arch, model.method, model.cifar_stem) == ("resnet_mini:8-8-16", "simsiam", False)
    assert model.head_names == ["projector", "predictor"] and model.prototypes is None
    assert model.eval().embed(torch.randn(2, 3, 16, 16)).shape == (2, 16)
    out = model([torch.randn(2, 3, 16, 16)] * 2)
    assert out["p"][0].shape == out["z"][0].shape == (2, 64)
