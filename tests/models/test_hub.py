"""``torchvision:<arch>`` and ``timm:<name>`` load the libraries' pretrained weights, from their
caches (no network in tests); ``random:<arch>`` is the only way to random weights.

torchvision: a state dict written by ``torch.save(model.state_dict())`` (how torchvision's files
are made) at torch hub's cache path of the DEFAULT weights' URL, in a temp ``TORCH_HOME``.
timm: a Hugging Face cache in a temp ``HF_HOME`` (``models--timm--<repo>/refs/main`` +
``snapshots/<commit>/``) holding files written by timm's own ``save_for_hf``, checked with
``huggingface_hub.scan_cache_dir``; loaded in a child process with ``HF_HUB_OFFLINE=1`` (the
library reads those variables at import).
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import urllib.request

import pytest
import torch

from e2mc.errors import CheckpointError
from e2mc.models import load_model
from e2mc.models.backbones import build_backbone

TIMM_NAME, TIMM_REPO = "test_vit.r160_in1k", "timm/test_vit.r160_in1k"


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def no_network(monkeypatch):
    """Every urllib request goes to a proxy on a port nobody listens on (a real refused connection)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{s.getsockname()[1]}"
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, proxy)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)  # urlopen builds its opener (and proxies) once


def test_random_is_random():
    model, report = load_model("random:resnet_mini:8-8-16", method="vicreg")
    assert report.format == "random" and report.source == {} and report.notes[0] == "random initialisation"
    assert report.heads_built == ["projector"] and any("warm up" in n for n in report.notes)


def test_torchvision_from_the_hub_cache(torch_home):
    import torchvision

    weights = torchvision.models.ResNet18_Weights.DEFAULT
    torch.manual_seed(3)
    ref = torchvision.models.resnet18()
    torch_home.mkdir(parents=True)
    file = torch_home / os.path.basename(weights.url)
    torch.save(ref.state_dict(), file)
    model, report = load_model("torchvision:resnet18", method="vicreg")
    assert report.format == "torchvision" and report.path == str(file)
    assert report.source["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert report.source["url"] == weights.url and report.heads_built == ["projector"]
    sd = model.backbone.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ref.state_dict().items() if not k.startswith("fc."))
    model, report = load_model("torchvision:resnet18", cifar_stem=True)  # new random 3x3 stem, rest pretrained
    assert model.backbone.conv1.weight.shape[-1] == 3 and any("stem" in n for n in report.notes)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)


def test_torchvision_missing_without_network(torch_home, no_network):
    with pytest.raises(CheckpointError) as info:
        load_model("torchvision:resnet50")
    msg = str(info.value)
    assert "\n" not in msg and "https://download.pytorch.org/models/resnet50-" in msg
    assert f"place it at {torch_home}/resnet50-" in msg and "random:resnet50" in msg
    with pytest.raises(CheckpointError, match="place it at"):
        build_backbone("resnet50", pretrained=True)


def _hf_cache(hf_home):
    """A Hugging Face hub cache holding timm's own save of a test_vit (random weights)."""
    import timm
    from timm.models._hub import save_for_hf

    torch.manual_seed(5)
    net = timm.create_model(TIMM_NAME, pretrained=False)
    repo = hf_home / "hub" / ("models--" + TIMM_REPO.replace("/", "--"))
    commit = hashlib.sha1(b"e2mc test snapshot").hexdigest()
    snapshot = repo / "snapshots" / commit
    save_for_hf(net, snapshot, safe_serialization=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(hf_home / "hub")
    assert [r.repo_id for r in info.repos] == [TIMM_REPO] and not info.warnings
    return net, snapshot / "model.safetensors"


CHILD = """
import json, sys, torch
from e2mc.models import load_model
model, report = load_model("timm:%s", method="simsiam")
torch.save(model.backbone.state_dict(), sys.argv[1])
print(json.dumps(report.to_dict()))
"""


def _child(args, hf_home, tmp_path):
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TORCH_HOME=str(tmp_path / "torch"))
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)


def test_timm_from_the_hf_cache_offline(tmp_path):
    ref, file = _hf_cache(tmp_path / "hf")
    out = tmp_path / "backbone.pt"
    res = _child(["-c", CHILD % TIMM_NAME, str(out)], tmp_path / "hf", tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["format"] == "timm" and report["arch"] == f"timm:{TIMM_NAME}"
    assert report["source"]["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert report["source"]["cache_path"] == str(file)
    got = torch.load(out, weights_only=True)
    want = {k: v for k, v in ref.state_dict().items() if not k.startswith("head.")}
    assert got.keys() == want.keys() and all(torch.equal(got[k], v) for k, v in want.items())


def test_timm_offline_without_cache_is_one_line(tmp_path):
    res = _child(["-m", "e2mc.cli", "inspect", f"timm:{TIMM_NAME}"], tmp_path / "empty_hf", tmp_path)
    err = res.stderr.strip()
    assert res.returncode == 2 and "\n" not in err and "Traceback" not in err, err
    assert f"https://huggingface.co/{TIMM_REPO}/resolve/main/model.safetensors" in err
    assert str(tmp_path / "empty_hf" / "hub" / "models--timm--test_vit.r160_in1k") in err


def test_torchvision_unreadable_cached_file(torch_home):
    import torchvision

    torch_home.mkdir(parents=True)
    file = torch_home / os.path.basename(torchvision.models.ResNet18_Weights.DEFAULT.url)
    file.write_bytes(b"not a checkpoint" * 64)
    with pytest.raises(CheckpointError, match="delete it to download it again") as info:
        load_model("torchvision:resnet18")
    assert "\n" not in str(info.value) and str(file) in str(info.value)
