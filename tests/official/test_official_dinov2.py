"""DINOv2 releases (``dinov2_vit*14[_reg4]_pretrain.pth``) written as facebookresearch/dinov2 writes
them (tests/official/gen_dinov2.py, checked against the official code): loaded into timm's
``vit_*_patch14[_reg4]_dinov2`` with the tokens of the official model at the native and at other
sizes (``data/dinov2_reference.pt``: the official ``forward_features``, written by
check/dinov2_official.py), continued with fresh DINO heads (one process and 2-process
``torchrun``) and exported to timm, safetensors and the release layout."""

from __future__ import annotations

import os
import pickle
import subprocess

import pytest
import torch

from e2mc.cli import main
from e2mc.models.checkpoints import load_model
from tests.official.conftest import HERE, ROOT, generator_cmd

REFERENCE = HERE / "data" / "dinov2_reference.pt"
PLAIN, REG, SWIGLU = "dinov2_vitt14_pretrain.pth", "dinov2_vitt14_reg4_pretrain.pth", "dinov2_vitg14t_pretrain.pth"
TINY = "embed_dim=128,depth=2,num_heads=2"
ARCHS = {
    PLAIN: f"timm:vit_small_patch14_dinov2:{TINY},img_size=70",
    REG: f"timm:vit_small_patch14_reg4_dinov2:{TINY},img_size=70",
    SWIGLU: f"timm:vit_giant_patch14_dinov2:{TINY},img_size=70,mlp_ratio=5.375",
}
SETS = [
    "data.image_size=32",
    "data.num_workers=0",
    "optim.batch_size=8",
    "optim.schedule=constant",
    "optim.lr=0.001",
    "train.probe_size=0",
    "train.tensorboard=false",
    "method.center_batches=1",
]


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    root = tmp_path_factory.mktemp("official_dinov2")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(generator_cmd("gen_dinov2.py", str(root)), capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def _input():
    torch.manual_seed(1)
    return torch.randn(2, 3, 70, 70)


@pytest.mark.parametrize("name", [PLAIN, REG, SWIGLU])
def test_release_gives_the_official_tokens_at_every_size(releases, name, one_torch_thread):
    model, report = load_model(releases / name, method="dino")
    assert (report.format, report.arch, report.method) == ("dinov2", ARCHS[name], "dino")
    assert report.dropped == ["mask_token"] and any("mask_token not loaded" in n for n in report.notes)
    assert report.missing == [] and report.unexpected == [] and report.heads_built == ["head"]
    net, x = model.backbone.eval(), _input()
    for hw, want in torch.load(REFERENCE, weights_only=True)[name].items():
        h, w = map(int, hw.split("x"))
        with torch.no_grad():
            tokens = net.forward_features(x[:, :, :h, :w])
            pooled = net(x[:, :, :h, :w])
        torch.testing.assert_close(tokens[:, 0], want["cls"], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(tokens[:, net.num_prefix_tokens :], want["patch"], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(pooled, want["cls"], atol=2e-5, rtol=1e-5)


def test_timm_resampling_would_differ_from_the_official(releases, one_torch_thread):
    """The reference tells the two resamplings apart: timm's own (size, antialiased) is off at 42 px."""
    from e2mc.methods.dinov2 import to_timm
    from e2mc.models.backbones import build_backbone

    net = build_backbone(ARCHS[PLAIN] + ",pos_offset=0,pos_antialias=true").eval()
    net.load_state_dict(to_timm(torch.load(releases / PLAIN, weights_only=True)))
    want = torch.load(REFERENCE, weights_only=True)[PLAIN]
    with torch.no_grad():
        assert torch.allclose(net(_input()), want["70x70"]["cls"], atol=2e-5)  # the stored grid: no resampling
        assert (net(_input()[:, :, :42, :42]) - want["42x42"]["cls"]).abs().max() > 1e-2


def test_timm_names_get_the_official_resampling():
    from e2mc.models.backbones import build_backbone

    small = build_backbone("timm:vit_small_patch14_dinov2:depth=1")
    reg = build_backbone("timm:vit_small_patch14_reg4_dinov2:depth=1")
    assert (small.pos_resampling, reg.pos_resampling) == ((0.1, False), (0.0, True))
    assert small.pos_embed.shape[1] == 1 + 37 * 37  # 518 px, as released
    assert small(torch.zeros(1, 3, 224, 224)).shape == (1, 384)  # a 16 x 16 grid resampled from 37 x 37
    x = torch.rand(1, 3, 96, 96)  # DINO's local crop: resized to 98 px (7 x 7 patches), as DINOv2's own
    with torch.no_grad():
        want = small(torch.nn.functional.interpolate(x, size=(98, 98), mode="bicubic", antialias=True))
        torch.testing.assert_close(small(x), want)
    assert not hasattr(build_backbone("timm:vit_tiny_patch16_224:depth=1"), "pos_resampling")
    back = pickle.loads(pickle.dumps(small))  # the classes are importable by name
    assert type(back) is type(small) and type(back.patch_embed) is type(small.patch_embed)
    with torch.no_grad():
        torch.testing.assert_close(back(x), small(x))
    with pytest.raises(Exception, match="drop them"):
        build_backbone("timm:resnet18:pos_offset=0.1")


def test_release_rows_are_in_the_zoo():
    from e2mc.models.zoo import ZOO

    row = ZOO["dino:dinov2-vits14-reg4"]
    assert row.url == "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth"
    assert (row.layout, row.heads, row.arch) == ("dinov2", False, "timm:vit_small_patch14_reg4_dinov2")
    assert sum(1 for n in ZOO if n.startswith("dino:dinov2-")) == 8


@pytest.mark.parametrize("name", [REG, SWIGLU])
def test_continued_with_fresh_heads_and_exported(releases, image_folder, tmp_path, name, capsys, one_torch_thread):
    import timm
    from safetensors.torch import load_file

    run = tmp_path / "run"
    sets = [*SETS, f"data.dataset={image_folder}", "train.head_warmup_steps=1", "train.max_steps=2"]
    sets += ["method.koleo_weight=0.1", "train.log_every=1"]  # DINOv2's KoLeo on the class tokens
    args = ["continue", str(releases / name), "--method", "dino", "--addon", "e2mc", "--out", str(run)]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    said = "".join(capsys.readouterr())
    assert "warm" in said.lower() and "Traceback" not in said
    rows = (run / "metrics.csv").read_text().splitlines()
    koleo = rows[0].split(",").index("base.koleo")
    values = [float(r.split(",")[koleo]) for r in rows[1:] if r.split(",")[koleo]]
    assert values and all(abs(v) < 50 for v in values), values  # logged, finite
    last = run / "checkpoints" / "last.pt"
    for to, out in (("timm", tmp_path / "b.pth"), ("safetensors", tmp_path / "b.safetensors")):
        assert main(["export", str(last), "--to", to, "--out", str(out)]) == 0
        sd = load_file(out) if to == "safetensors" else torch.load(out, weights_only=True)
        base, _, opts = ARCHS[name][5:].partition(":")
        kw = {k: float(v) if "." in v else int(v) for k, v in (o.split("=") for o in opts.split(","))}
        net = timm.create_model(base, num_classes=0, **kw)
        net.load_state_dict(sd, strict=True)  # timm's own model takes the continued backbone
    src = torch.load(releases / name, weights_only=True)
    assert main(["export", str(last), "--to", "dinov2", "--out", str(tmp_path / "r.pth")]) == 0
    back = torch.load(tmp_path / "r.pth", weights_only=True)
    assert list(back) == list(src) and all(back[k].shape == v.shape for k, v in src.items())
    assert not torch.equal(back["blocks.1.ls2.gamma"], src["blocks.1.ls2.gamma"])  # continued
    assert main(["export", str(last), "--to", "original", "--out", str(tmp_path / "o.pth")]) == 0
    original = torch.load(tmp_path / "o.pth", weights_only=True)  # the layout the run was continued from
    assert list(original) == list(src) and all(torch.equal(original[k], v) for k, v in back.items())


@pytest.mark.slow
def test_continued_under_torchrun(releases, image_folder, tmp_path):
    from tests.test_cli_torchrun import torchrun

    run = tmp_path / "run"
    sets = [*SETS, f"data.dataset={image_folder}", "train.head_warmup_steps=1", "train.max_steps=2"]
    sets = [a for s in [*sets, "optim.batch_size=4", "train.log_every=1"] for a in ("--set", s)]
    res = torchrun(
        ["continue", releases / PLAIN, "--method", "dino", "--addon", "e2mc", "--device", "cpu", "--out", run, *sets],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    from e2mc.train.run import load_checkpoint

    st = load_checkpoint(run / "checkpoints" / "last.pt")
    assert st["world_size"] == 2 and st["step"] >= 2 and st["dino_center"]["known"] is True


HUB_CHILD = """
import json, sys, torch
from e2mc.models import load_model
model, report = load_model("timm:vit_small_patch14_dinov2.lvd142m", method="dino")
net = model.backbone.eval()
torch.manual_seed(0)
with torch.no_grad():
    out = net(torch.rand(1, 3, 224, 224))
torch.save({"sd": net.state_dict(), "out": out}, sys.argv[1])
print(json.dumps({**report.to_dict(), "resampling": list(net.pos_resampling)}))
"""


def test_timm_name_from_the_hf_cache_offline(tmp_path):
    """``timm:vit_small_patch14_dinov2.lvd142m`` through models/hub.py: a Hugging Face cache holding
    timm's own save (random weights), read with ``HF_HUB_OFFLINE=1``, then the official resampling."""
    import hashlib
    import json
    import sys

    import timm
    from timm.models._hub import save_for_hf

    from e2mc.models.posembed import resample

    torch.manual_seed(5)
    ref = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0)
    repo = tmp_path / "hf" / "hub" / "models--timm--vit_small_patch14_dinov2.lvd142m"
    commit = hashlib.sha1(b"e2mc dinov2 snapshot").hexdigest()
    save_for_hf(ref, repo / "snapshots" / commit, safe_serialization=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", TORCH_HOME=str(tmp_path / "torch"))
    env.update(OMP_NUM_THREADS="1")
    out = tmp_path / "got.pt"
    res = subprocess.run([sys.executable, "-c", HUB_CHILD, str(out)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["arch"] == "timm:vit_small_patch14_dinov2.lvd142m" and report["resampling"] == [0.1, False]
    assert report["source"]["cache_path"].endswith("model.safetensors") and "head" in report["heads_built"]
    got = torch.load(out, weights_only=True)
    assert all(torch.equal(got["sd"][k], v) for k, v in ref.state_dict().items())
    pos = ref.pos_embed.detach()  # the official interpolation, 37 x 37 -> 16 x 16, put in by hand
    ref.pos_embed.data = torch.cat([pos[:, :1], resample(pos[:, 1:], (37, 37), (16, 16), 0.1, False)], dim=1)
    ref.patch_embed.img_size, ref.patch_embed.grid_size = (224, 224), (16, 16)
    torch.manual_seed(0)
    with torch.no_grad():
        torch.testing.assert_close(got["out"], ref.eval()(torch.rand(1, 3, 224, 224)), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("size", ["small", "base", "large", "giant"])
@pytest.mark.parametrize("reg", ["", "_reg4"])
def test_release_arch_read_from_the_weights_of_every_size(size, reg):
    """Each release's shapes (timm's model written back in the official layout, on the meta device)
    name the timm model it came from, with no options."""
    import timm

    from e2mc.methods.dinov2 import arch_of, from_timm, to_timm

    name = f"vit_{size}_patch14{reg}_dinov2"
    with torch.device("meta"):
        sd = timm.create_model(name, num_classes=0).state_dict()
    official = from_timm(sd, swiglu=size == "giant")
    assert arch_of(official) == f"timm:{name}"
    assert ("blocks.0.mlp.w12.weight" in official) == (size == "giant") and ("register_tokens" in official) == bool(reg)
    assert official["pos_embed"].shape[1] == 1 + 37 * 37
    back = to_timm(official)
    assert list(back) == list(sd) and all(back[k].shape == v.shape for k, v in sd.items())


@pytest.fixture
def server(monkeypatch, tmp_path):
    """tests/models/test_zoo.py's local HTTP mirror, as ``E2MC_ZOO_URL_BASE``, with its own torch hub cache."""
    import threading

    from tests.models.test_zoo import Server

    srv = Server()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("E2MC_ZOO_URL_BASE", srv.base)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    yield srv
    srv.shutdown()
    srv.server_close()


def test_zoo_name_loads_the_release_file(releases, server, one_torch_thread):
    """``dino:dinov2-vits14-reg4``: the README's URL (a local mirror serving the tiny file there)."""
    server.files["/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth"] = (releases / REG).read_bytes()
    model, report = load_model("dino:dinov2-vits14-reg4", method="dino")
    assert (report.format, report.arch, report.dropped) == ("dinov2", ARCHS[REG], ["mask_token"])
    assert report.source["cache_path"].endswith("/dinov2_vits14_reg4_pretrain.pth")
    assert [p.split("/")[-1] for p, _ in server.requests] == ["dinov2_vits14_reg4_pretrain.pth"]
