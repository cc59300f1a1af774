"""Per-layer evaluation: hooks give the manual forward's tensors, the final layer is today's
features bit for bit, cache keys per layer and pooling, one-line errors, the layer registry."""

import pytest
import torch
from torch import nn

from e2mc.errors import ConfigError
from e2mc.evaluation.features import default_transform, extract_features
from e2mc.evaluation.layerfeatures import extract_layer_features
from e2mc.evaluation.layers import Layer, register_family, resolve_layers
from e2mc.models.backbones import build_backbone
from e2mc.models.checkpoints import load_model
from tests.evaluate.conftest import colour_dataset

F32 = dict(device="cpu", cache_dtype="float32", use_cache=False)


def _images(ds):
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    return default_transform(ds)[0](x)


@pytest.mark.parametrize("arch", ["resnet_mini:8-16-32", "resnet18", "timm:resnet18"])
def test_resnet_stage_hooks_equal_manual_forward(arch, one_torch_thread):
    torch.manual_seed(0)
    bb = build_backbone(arch).eval()
    ds = colour_dataset(4, size=32)
    layers = resolve_layers(bb, "all")
    timm = arch.startswith("timm:")  # timm's own pooling head: the output is a layer of its own
    stages = layers[:-1] if timm else layers
    assert [la.name for la in layers] == [f"layer{i}" for i in range(1, len(stages) + 1)] + ["final"] * timm
    got = extract_layer_features(bb, ds, layers, batch_size=5, **F32)
    with torch.no_grad():
        x = _images(ds)
        x = (bb.act1 if timm else bb.relu)(bb.bn1(bb.conv1(x)))
        x = getattr(bb, "maxpool", nn.Identity())(x)
        for la in stages:
            x = getattr(bb, la.name)(x)
            want = x.mean(dim=(2, 3))
            assert torch.allclose(got[la.name]["backbone"], want, atol=1e-5), la.name
        assert torch.equal(got[layers[-1].name]["backbone"], bb(_images(ds)))  # the last stage / final: the output


@pytest.mark.parametrize("pooling", ["cls", "mean", "cls+mean"])
def test_vit_block_hooks_equal_manual_forward(pooling, one_torch_thread):
    torch.manual_seed(0)
    bb = build_backbone("timm:vit_tiny_patch16_224:depth=3,reg_tokens=2", img_size=32).eval()
    ds = colour_dataset(3, size=32)
    layers = resolve_layers(bb, "all", pooling)
    assert [la.name for la in layers] == ["blocks.0", "blocks.1", "blocks.2", "final"]
    assert layers[0].prefix == 3  # CLS + 2 registers: never in the mean
    got = extract_layer_features(bb, ds, layers, token_pooling=pooling, batch_size=4, **F32)
    with torch.no_grad():
        x = bb.norm_pre(bb._pos_embed(bb.patch_embed(_images(ds))))
        for i, blk in enumerate(bb.blocks):
            x = blk(x)
            parts = {"cls": [x[:, 0]], "mean": [x[:, 3:].mean(1)], "cls+mean": [x[:, 0], x[:, 3:].mean(1)]}[pooling]
            assert torch.allclose(got[f"blocks.{i}"]["backbone"], torch.cat(parts, 1), atol=1e-5)
        assert torch.equal(got["final"]["backbone"], bb(_images(ds)))


def test_final_layer_is_todays_features_and_shares_their_cache(tmp_path, one_torch_thread):
    torch.manual_seed(0)
    m, _ = load_model("random:resnet_mini:8-16-32", method="vicreg", head_sizes={"projector": (16, 16)})
    ds = colour_dataset(5, size=16)
    kw = dict(device="cpu", cache_dir=str(tmp_path), which=("backbone", "projector"), batch_size=4)
    layers = resolve_layers(m.backbone, "all")
    per = extract_layer_features(m, ds, layers, **kw)
    today = extract_features(m, ds, **kw)
    assert today.meta["cached"] and today.key == per["layer3"].key  # read from the entry the layers wrote
    fresh = extract_features(m, ds, **{**kw, "use_cache": False})
    for w in ("backbone", "projector"):
        assert torch.equal(per["layer3"][w], fresh[w])
    keys = {la: fs.key for la, fs in per.items()}
    assert len(set(keys.values())) == 3  # one entry per layer
    again = extract_layer_features(m, ds, layers, **kw)
    assert all(fs.meta["cached"] for fs in again.values())
    assert all(torch.equal(again[la]["backbone"], per[la]["backbone"]) for la in keys)


def test_cache_keys_differ_by_pooling(tmp_path, one_torch_thread):
    torch.manual_seed(0)
    bb = build_backbone("timm:vit_tiny_patch16_224:depth=2", img_size=32)
    ds = colour_dataset(2, size=32)
    kw = dict(device="cpu", cache_dir=str(tmp_path))
    a = extract_layer_features(bb, ds, resolve_layers(bb, "blocks.1,final", "cls"), token_pooling="cls", **kw)
    b = extract_layer_features(bb, ds, resolve_layers(bb, "blocks.1,final", "mean"), token_pooling="mean", **kw)
    assert a["blocks.1"].key != b["blocks.1"].key and a["blocks.1"].meta["pooling"] == "cls"
    assert a["final"].key == b["final"].key and b["final"].meta["cached"]  # the model's output: no pooling


def test_selection_and_one_line_errors():
    from e2mc.evaluation.settings import EvalSettings

    s = EvalSettings().with_overrides(["eval.layers=-1", "eval.token_pooling=mean"])
    assert (s.layers, s.token_pooling) == ("-1", "mean")
    assert EvalSettings().with_overrides(["eval.layers=[layer1, layer3]"]).layers == "layer1,layer3"
    with pytest.raises(ConfigError, match="^eval.token_pooling='max' is not valid; give one of cls, mean, cls"):
        EvalSettings().with_overrides(["eval.token_pooling=max"])
    bb = build_backbone("resnet_mini:8-16-32")
    assert [la.name for la in resolve_layers(bb, "-1")] == ["layer3"]
    assert [la.name for la in resolve_layers(bb, "layer3,layer1")] == ["layer1", "layer3"]  # forward order
    for spec, words in [("layer9", "layer1, layer2, layer3"), ("", "give all"), ("5", "layer1")]:
        with pytest.raises(ConfigError) as e:
            resolve_layers(bb, spec)
        assert "\n" not in str(e.value) and words in str(e.value)
    with pytest.raises(
        ConfigError, match=r"^per-layer evaluation does not know the backbone Sequential \(its layers: 0, 1\)"
    ):
        resolve_layers(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), "all")
    vit = build_backbone("timm:vit_tiny_patch16_224:depth=1,class_token=false,global_pool=avg", img_size=32)
    with pytest.raises(ConfigError, match="needs a CLS token.*eval.token_pooling=mean"):
        resolve_layers(vit, "blocks.0", "cls")
    assert resolve_layers(vit, "blocks.0", "mean")[0].prefix == 0


class _Frames(nn.Module):
    """A stand-in audio encoder: (N, 3, H, W) -> frames (N, T, D) through two layers, mean over time."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(3, 5), nn.Linear(5, 4)])

    def forward(self, x):
        h = x.flatten(2).transpose(1, 2)
        for layer in self.layers:
            h = layer(h)
        return h.mean(1)


register_family(
    "test_frames",
    lambda bb: isinstance(bb, _Frames),
    lambda bb: (
        [Layer(f"layers.{i}", "tokens") for i in range(len(bb.layers) - 1)] + [Layer("final", "final", final=True)]
    ),
)


def test_a_registered_family_declares_its_layers(one_torch_thread):
    torch.manual_seed(0)
    enc = _Frames()
    ds = colour_dataset(2, size=4)
    got = extract_layer_features(enc, ds, resolve_layers(enc, "all", "mean"), token_pooling="mean", **F32)
    with torch.no_grad():
        h = enc.layers[0](_images(ds).flatten(2).transpose(1, 2))
    assert torch.allclose(got["layers.0"]["backbone"], h.mean(1), atol=1e-6)
    assert torch.equal(got["final"]["backbone"], enc(_images(ds)))


class _FailsOnce(torch.utils.data.Dataset):
    """``colour_dataset`` whose item ``bad`` raises on the first pass (a crash mid-extraction)."""

    def __init__(self, ds, bad):
        self.ds, self.bad, self.failed = ds, bad, False

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        if i == self.bad and not self.failed:
            self.failed = True
            raise OSError("disk went away")
        return self.ds[i]


def test_interrupted_layer_extraction_resumes(tmp_path, monkeypatch, one_torch_thread):
    import e2mc.evaluation.features as features
    from e2mc.errors import DataError

    monkeypatch.setattr(features, "PROGRESS_SECONDS", 0.0)  # record after every batch
    torch.manual_seed(0)
    bb = build_backbone("resnet_mini:8-16-32").eval()
    ds = _FailsOnce(colour_dataset(4, size=16), bad=9)
    layers = resolve_layers(bb, "layer1,layer3")
    kw = dict(device="cpu", cache_dir=str(tmp_path), batch_size=4, cache_dtype="float32")
    with pytest.raises(DataError, match="the 8 rows extracted are cached"):
        extract_layer_features(bb, ds, layers, **kw)
    got = extract_layer_features(bb, ds, layers, **kw)
    assert all(fs.meta["resumed_from"] == 8 for fs in got.values())
    clean = extract_layer_features(bb, ds, layers, **{**kw, "use_cache": False})
    assert all(torch.equal(got[la][w], clean[la][w]) for la in got for w in ("backbone",))
