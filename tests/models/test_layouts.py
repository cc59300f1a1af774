"""Each published checkpoint layout, written with its exact key names and shapes: detection,
loaded tensors, the report and the export round trip (load -> export -> load)."""

import pytest
import torch

from e2mc.models.checkpoints import load_model
from e2mc.models.export import export_model

from .conftest import rand_like_sd, simsiam_head_shapes, swav_shapes, vicreg_projector_shapes


def assert_loaded(model, trunk: dict, heads: dict):
    """Every written tensor sits unchanged at its place in the model."""
    sd = model.state_dict()
    for k, v in trunk.items():
        assert torch.equal(sd[f"backbone.{k}"], v), k
    for h, hsd in heads.items():
        for k, v in hsd.items():
            assert torch.equal(sd[f"{h}.{k}"], v), f"{h}.{k}"
    assert len(sd) == len(trunk) + sum(len(h) for h in heads.values())


def assert_round_trip(tmp_path, model, report, original: dict, get=lambda o: o, skip=()):
    """Export in the original layout: same keys (minus dropped), identical tensors; reload equal."""
    out = export_model(model, report, tmp_path / "export.pth", optimizer_state=report.optimizer_state)
    written = torch.load(out, weights_only=True)
    a, b = get(original), get(written)
    assert set(b) == set(a) - set(skip)
    for k in b:
        assert torch.equal(a[k], b[k]), k
    model2, report2 = load_model(out)
    assert report2.format == report.format and report2.arch == report.arch
    assert report2.heads == report.heads
    s1, s2 = model.state_dict(), model2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    return written


def test_vicreg_backbone_only(tmp_path, r50_trunk):
    path = tmp_path / "resnet50.pth"
    torch.save(r50_trunk, path)
    model, report = load_model(path)
    assert (report.format, report.arch, report.cifar_stem) == ("torchvision", "resnet50", False)
    assert report.heads == [] and report.heads_built == [] and report.method is None
    assert report.missing == [] and report.unexpected == []
    assert_loaded(model, r50_trunk, {})
    assert model.eval().embed(torch.randn(2, 3, 32, 32)).shape == (2, 2048)
    assert_round_trip(tmp_path, model, report, r50_trunk)


def test_vicreg_backbone_with_method_builds_fresh_heads(tmp_path, r50_trunk):
    torch.save(r50_trunk, tmp_path / "resnet50.pth")
    model, report = load_model(tmp_path / "resnet50.pth", method="vicreg")
    assert report.heads == [] and report.heads_built == ["projector"]
    assert any("warm up heads with the backbone frozen" in n for n in report.notes)
    assert report.head_sizes == {"projector": [8192, 8192, 8192]}  # the published expander
    assert model.projector[6].weight.shape == (8192, 8192) and model.projector[6].bias is None


def test_vicreg_full(tmp_path, r50_trunk):
    """Real ResNet-50 trunk; expander 2048-512-512-256 (the 8192 one: test_vicreg_full_size_expander)."""
    proj = rand_like_sd(vicreg_projector_shapes(2048, (512, 512, 256)), seed=3)
    opt = {"state": {0: {"mu": torch.ones(3)}}, "param_groups": [{"lr": 0.2, "params": [0]}]}
    obj = {
        "model": {f"module.backbone.{k}": v for k, v in r50_trunk.items()}
        | {f"module.projector.{k}": v for k, v in proj.items()},
        "optimizer": opt,
        "epoch": 100,
    }
    torch.save(obj, tmp_path / "resnet50_fullckpt.pth")
    model, report = load_model(tmp_path / "resnet50_fullckpt.pth")
    assert (report.format, report.arch, report.method) == ("vicreg", "resnet50", "vicreg")
    assert report.heads == ["projector"] and report.heads_built == [] and report.epoch == 100
    assert report.head_sizes == {"projector": [512, 512, 256]}
    assert torch.equal(report.optimizer_state["state"][0]["mu"], torch.ones(3))
    assert report.to_dict()["has_optimizer_state"] is True
    assert_loaded(model, r50_trunk, {"projector": proj})
    written = assert_round_trip(tmp_path, model, report, obj, get=lambda o: o["model"])
    assert written["epoch"] == 100 and written["optimizer"]["param_groups"][0]["lr"] == 0.2


@pytest.mark.slow
def test_vicreg_full_size_expander(tmp_path, r50_trunk):
    """The published 2048-8192-8192-8192 expander (151M params, ~700 MB file, ~5 s, ~2.2 GB RAM)."""
    proj = rand_like_sd(vicreg_projector_shapes(2048, (8192, 8192, 8192)), seed=4)
    obj = {
        "model": {f"module.backbone.{k}": v for k, v in r50_trunk.items()}
        | {f"module.projector.{k}": v for k, v in proj.items()},
        "epoch": 1,
    }
    torch.save(obj, tmp_path / "full.pth")
    del obj
    model, report = load_model(tmp_path / "full.pth")
    assert report.head_sizes == {"projector": [8192, 8192, 8192]}
    assert_loaded(model, r50_trunk, {"projector": proj})


def test_swav(tmp_path, r50_trunk):
    heads = rand_like_sd(swav_shapes(), seed=5)
    obj = {f"module.{k}": v for k, v in (r50_trunk | heads).items()}
    torch.save(obj, tmp_path / "swav_800ep_pretrain.pth.tar")
    model, report = load_model(tmp_path / "swav_800ep_pretrain.pth.tar")
    assert (report.format, report.arch, report.method) == ("swav", "resnet50", "swav")
    assert report.heads == ["projector", "prototypes"] and report.heads_built == []
    assert report.head_sizes == {"hidden": 2048, "out": 128, "prototypes": 3000}
    assert_loaded(
        model,
        r50_trunk,
        {
            "projector": {k[16:]: v for k, v in heads.items() if k.startswith("projection_head.")},
            "prototypes": {"weight": heads["prototypes.weight"]},
        },
    )
    out = model.eval()([torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16)])
    assert [s.shape for s in out["scores"]] == [(2, 3000)] * 3
    assert_round_trip(tmp_path, model, report, obj)


def test_simsiam(tmp_path, r50_trunk):
    proj, pred = (rand_like_sd(s, seed=6 + i) for i, s in enumerate(simsiam_head_shapes()))
    sd = (
        {f"module.encoder.{k}": v for k, v in r50_trunk.items()}
        | {f"module.encoder.fc.{k}": v for k, v in proj.items()}
        | {f"module.predictor.{k}": v for k, v in pred.items()}
    )
    obj = {"epoch": 100, "arch": "resnet50", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}
    torch.save(obj, tmp_path / "checkpoint_0099.pth.tar")
    model, report = load_model(tmp_path / "checkpoint_0099.pth.tar")
    assert (report.format, report.arch, report.method, report.epoch) == ("simsiam", "resnet50", "simsiam", 100)
    assert report.heads == ["projector", "predictor"]
    assert report.head_sizes == {"proj_hidden": 2048, "proj_dim": 2048, "pred_hidden": 512}
    assert_loaded(model, r50_trunk, {"projector": proj, "predictor": pred})
    assert not model.projector[7].affine and model.projector[6].bias is not None
    written = assert_round_trip(tmp_path, model, report, obj, get=lambda o: o["state_dict"])
    assert written["arch"] == "resnet50" and written["epoch"] == 100


def test_torchvision_with_fc_drops_classifier(tmp_path, r18_trunk):
    sd = r18_trunk | {"fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}
    torch.save(sd, tmp_path / "resnet18.pth")
    model, report = load_model(tmp_path / "resnet18.pth")
    assert (report.format, report.arch) == ("torchvision", "resnet18")
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"] == sorted(report.dropped)
    assert not any(k.startswith("backbone.fc") for k in model.state_dict())
    assert_loaded(model, r18_trunk, {})
    assert_round_trip(tmp_path, model, report, sd, skip=("fc.weight", "fc.bias"))


def test_timm_vit_drops_head(tmp_path):
    import timm

    with torch.device("meta"):
        net = timm.create_model("vit_tiny_patch16_224", num_classes=1000)
    sd = rand_like_sd({k: tuple(v.shape) for k, v in net.state_dict().items()}, seed=9)
    torch.save(sd, tmp_path / "vit.pth")
    model, report = load_model(tmp_path / "vit.pth", method="simsiam")
    assert (report.format, report.arch) == ("timm", "timm:vit_tiny_patch16_224")
    assert sorted(report.dropped) == ["head.bias", "head.weight"]
    assert report.heads_built == ["projector", "predictor"] and report.head_sizes["proj_hidden"] == 192
    bsd = model.backbone.state_dict()
    assert all(torch.equal(bsd[k], v) for k, v in sd.items() if not k.startswith("head."))


def test_lightning_ckpt(tmp_path):
    from e2mc.models.model import SSLModel

    torch.manual_seed(0)
    src = SSLModel.build("vicreg", "resnet_mini:8-16-16", projector=[32, 32, 16])
    sd = {f"model.{k}": torch.randn_like(v) if v.is_floating_point() else v for k, v in src.state_dict().items()}
    sd["online_probe.weight"] = torch.randn(10, 16)  # another Lightning module: dropped
    obj = {"state_dict": sd, "pytorch-lightning_version": "2.2.0", "epoch": 7, "global_step": 70}
    torch.save(obj, tmp_path / "last.ckpt")
    model, report = load_model(tmp_path / "last.ckpt")
    assert (report.format, report.arch, report.method, report.epoch) == (
        "lightning",
        "resnet_mini:8-16-16",
        "vicreg",
        7,
    )
    assert report.layout["prefix"] == "model." and "online_probe.weight" in report.dropped
    ms = model.state_dict()
    assert all(torch.equal(ms[k[6:]], v) for k, v in sd.items() if k.startswith("model."))
    assert_round_trip(tmp_path, model, report, obj, get=lambda o: o["state_dict"], skip=("online_probe.weight",))


def test_e2mc_own_checkpoint(tmp_path):
    from e2mc.models.model import SSLModel

    torch.manual_seed(0)
    src = SSLModel.build("swav", "resnet18", cifar_stem=True, hidden=64, out=16, prototypes=30)
    obj = {
        "e2mc_version": "0.1.0",
        "format": "e2mc",
        "method": "swav",
        "arch": "resnet18",
        "cifar_stem": True,
        "head_sizes": src.head_sizes,
        "model": src.state_dict(),
        "epoch": 3,
        "step": 30,
        "source_format": "random",
    }
    torch.save(obj, tmp_path / "last.pt")
    model, report = load_model(tmp_path / "last.pt")
    assert (report.format, report.arch, report.cifar_stem, report.method) == ("e2mc", "resnet18", True, "swav")
    assert model.backbone.conv1.kernel_size == (3, 3) and isinstance(model.backbone.maxpool, torch.nn.Identity)
    assert report.head_sizes == {"hidden": 64, "out": 16, "prototypes": 30}
    assert_round_trip(tmp_path, model, report, obj, get=lambda o: o["model"])
    # a run continued from an official SwAV file goes back to SwAV's layout, 10 + 3 epochs on
    torch.save(
        {
            **obj,
            "source_format": "swav",
            "source_epoch": 10,
            "source_layout": {"kind": "swav", "module_prefix": True, "wrapped": True},
        },
        tmp_path / "run.pt",
    )
    model, report = load_model(tmp_path / "run.pt")
    export_model(model, report, tmp_path / "swav.pth")
    written = torch.load(tmp_path / "swav.pth", weights_only=True)
    assert written["epoch"] == 13 and "module.prototypes.weight" in written["state_dict"]
    assert torch.equal(written["state_dict"]["module.conv1.weight"], obj["model"]["backbone.conv1.weight"])


def test_safetensors_backbone(tmp_path, r18_trunk):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in r18_trunk.items()}, tmp_path / "b.safetensors")
    model, report = load_model(tmp_path / "b.safetensors", method="vicreg")
    assert (report.format, report.arch, report.heads_built) == ("safetensors", "resnet18", ["projector"])
    assert_loaded(
        model,
        r18_trunk,
        {"projector": {k[10:]: v for k, v in model.state_dict().items() if k.startswith("projector.")}},
    )
