"""Barlow Twins' official files (written by gen_barlowtwins.py, checked against main.py at 8e8d284):
read whole, told apart from VICReg's look-alike ``model.pth``, continued with every add-on, exported
back to main.py's layout and resumed the official way (one process and 2-process ``torchrun``)."""

import json

import pytest
import torch

from e2mc.cli import main
from e2mc.models import load_model
from e2mc.models.adapters import ADAPTERS
from e2mc.models.checkpoints import detect_format, read_checkpoint
from tests.official.conftest import ROOT, run_generator
from tests.official.test_official_continue import TINY

GEN = "gen_barlowtwins.py"
PARAMS, WEIGHTS, BIASES = 67, 23, 44  # ResNet-18 + 3 bias-free Linears + 2 BN: main.py's two LARS groups


@pytest.fixture(scope="module")
def bt(tmp_path_factory):
    out = tmp_path_factory.mktemp("barlowtwins")
    run_generator(GEN, "generate", str(out))
    return out


def official_reload(path) -> dict:
    return json.loads(run_generator(GEN, "reload", str(path)).strip().splitlines()[-1])


def test_checkpoint_read_whole(bt, capsys, one_torch_thread):
    assert main(["inspect", str(bt / "checkpoint.pth")]) == 0
    rows = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in capsys.readouterr().out.splitlines())}
    assert (rows["format"], rows["method"], rows["arch"]) == ("barlowtwins", "barlowtwins", "resnet18")
    model, report = load_model(bt / "checkpoint.pth")
    assert report.heads == ["projector", "bn"] and report.heads_built == []
    assert report.head_sizes == {"projector": [64, 64, 64]} and report.epoch == 100
    expected = torch.load(bt / "checkpoint.tensors.pt", weights_only=True)
    loaded = model.state_dict()
    assert {f"module.{k}" for k in loaded} == set(expected)  # every tensor, bn's running statistics included
    assert all(torch.equal(loaded[k[7:]], v) for k, v in expected.items())
    assert int(loaded["bn.num_batches_tracked"]) == 4  # 2 steps x 2 views
    groups = report.optimizer_state["param_groups"]
    assert [len(g["params"]) for g in groups] == [WEIGHTS, BIASES]
    assert all(g["weight_decay_filter"] is True and g["lars_adaptation_filter"] is True for g in groups)
    assert report.stand_ins == []  # boolean filters: torch's weights-only load reads it as it is


def test_backbone_file_read_whole(bt, one_torch_thread):
    model, report = load_model(bt / "resnet50.pth")
    assert (report.format, report.method, report.arch) == ("torchvision", None, "resnet18")
    expected = torch.load(bt / "checkpoint.tensors.pt", weights_only=True)
    got = model.backbone.state_dict()
    assert set(got) == {k[len("module.backbone.") :] for k in expected if k.startswith("module.backbone.")}
    assert all(torch.equal(v, expected[f"module.backbone.{k}"]) for k, v in got.items())
    model, report = load_model(bt / "resnet50.pth", method="barlowtwins")  # fresh heads for a continue
    assert report.heads_built == ["projector", "bn"] and report.head_sizes == {"projector": [2048] * 3}


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


def test_zoo_names_load_the_released_files(bt, server, one_torch_thread):
    """``barlowtwins:resnet50-full`` / ``barlowtwins:resnet50``: the README's ljng URLs (here on a local
    mirror), each in its own cache file (VICReg's release is also called resnet50.pth)."""
    server.files["/barlowtwins/ljng/checkpoint.pth"] = (bt / "checkpoint.pth").read_bytes()
    server.files["/barlowtwins/ljng/resnet50.pth"] = (bt / "resnet50.pth").read_bytes()
    _, full = load_model("barlowtwins:resnet50-full")
    assert (full.format, full.method, full.heads) == ("barlowtwins", "barlowtwins", ["projector", "bn"])
    assert full.source["cache_path"].endswith("/barlowtwins_ljng_checkpoint.pth")
    _, bare = load_model("barlowtwins:resnet50")
    assert (bare.format, bare.method, bare.heads) == ("torchvision", None, [])
    assert bare.source["cache_path"].endswith("/barlowtwins_ljng_resnet50.pth")
    assert sorted(p.split("/")[-1] for p, _ in server.requests) == ["checkpoint.pth", "resnet50.pth"]


def _vicreg_like(bt) -> dict:
    """main_vicreg.py's ``model.pth`` shape: same top level, projector Linear layers with biases, no bn."""
    from e2mc.models.model import SSLModel

    m = SSLModel.build("vicreg", "resnet18", projector=[64, 64, 64])
    return {"epoch": 1, "model": {f"module.{k}": v for k, v in m.state_dict().items()}, "optimizer": {}}


def test_detection_tells_barlowtwins_from_vicreg(bt):
    obj = read_checkpoint(bt / "checkpoint.pth")[0]
    assert detect_format(obj) == "barlowtwins"
    no_bn = dict(obj, model={k: v for k, v in obj["model"].items() if not k.startswith("module.bn.")})
    assert detect_format(no_bn) == "barlowtwins"  # the bias-free projector alone
    vic = _vicreg_like(bt)
    assert detect_format(vic) == "vicreg" and ADAPTERS["barlowtwins"].detect(vic) == 0.0
    assert ADAPTERS["vicreg"].split(vic).heads.keys() == {"projector"}
    assert ADAPTERS["barlowtwins"].split(obj).heads.keys() == {"projector", "bn"}


def test_export_of_the_loaded_file_is_the_file(bt, tmp_path, one_torch_thread):
    from e2mc.models.export import export_model

    model, report = load_model(bt / "checkpoint.pth")
    out = export_model(model, report, tmp_path / "checkpoint.pth", optimizer_state=report.optimizer_state)
    a, b = torch.load(bt / "checkpoint.pth", weights_only=True), torch.load(out, weights_only=True)
    assert list(a) == list(b) == ["epoch", "model", "optimizer"]
    assert list(a["model"]) == list(b["model"]) and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert official_reload(out)["with_mu"] == PARAMS


@pytest.mark.parametrize("addon", ["e2mc", "vc", "uniformity", "mmcr", "none"])
def test_continue_with_each_addon(bt, image_folder, tmp_path, addon, capsys, one_torch_thread):
    run = tmp_path / "run"
    sets = [f"data.dataset={image_folder}", *TINY, "train.max_steps=1", "train.log_every=1"]
    args = ["continue", str(bt / "checkpoint.pth"), "--addon", addon, "--out", str(run)]
    assert main([*args, *(a for o in sets for a in ("--set", o))]) == 0
    capsys.readouterr()
    import csv

    rows = list(csv.DictReader((run / "metrics.csv").open()))
    step = next(r for r in rows if r["phase"] == "train")
    assert float(step["base.on_diag"]) >= 0 and float(step["base.off_diag"]) > 0
    assert (float(step["addon"]) == 0) == (addon == "none")
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ck["method"] == "barlowtwins" and int(ck["model"]["bn.num_batches_tracked"]) == 4 + 2


def test_continue_from_the_backbone_file_warms_fresh_heads(bt, image_folder, tmp_path, capsys, one_torch_thread):
    run = tmp_path / "run"
    sets = [f"data.dataset={image_folder}", *TINY, "train.max_steps=1", "train.head_warmup_steps=2"]
    sets += ["model.head_sizes={projector: [64, 64, 64]}"]
    args = ["continue", str(bt / "resnet50.pth"), "--method", "barlowtwins", "--out", str(run)]
    assert main([*args, *(a for o in sets for a in ("--set", o))]) == 0
    said = capsys.readouterr()
    assert "heads warm-up: 2 steps on projector, bn (backbone frozen)" in said.out + said.err
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert int(ck["model"]["bn.num_batches_tracked"]) == 2 * (2 + 1)  # both views, warm-up and main steps
    start = torch.load(bt / "resnet50.pth", weights_only=True)
    assert not torch.equal(ck["model"]["backbone.conv1.weight"], start["conv1.weight"])  # then the backbone moved


def test_continue_restores_lars_and_exports_for_main_py(bt, image_folder, tmp_path, capsys, one_torch_thread):
    run, out = tmp_path / "run", tmp_path / "exported" / "checkpoint.pth"
    sets = [f"data.dataset={image_folder}", *TINY, "optim.restore_state=true", "optim.exclude_bias_and_norm=true"]
    args = ["continue", str(bt / "checkpoint.pth"), "--addon", "e2mc", "--out", str(run)]
    assert main([*args, *(a for o in sets for a in ("--set", o))]) == 0
    said = capsys.readouterr()
    assert f"restored the optimiser state of {PARAMS} parameters" in said.out + said.err
    assert main(["export", str(run / "checkpoints" / "last.pt"), "--out", str(out), "--to", "original"]) == 0
    capsys.readouterr()
    got = official_reload(out)  # main.py's resume: model.load_state_dict, optimizer.load_state_dict, a step
    assert got["epoch"] == 101 and got["groups"] == [WEIGHTS, BIASES] and got["weights_then_biases"]
    assert got["filters"] == [[True, True], [True, True]] and got["with_mu"] == PARAMS and got["mu_finite"]
    before, after = (torch.load(p, weights_only=True) for p in (bt / "checkpoint.pth", out))
    assert list(after["model"]) == list(before["model"])  # main.py's keys, in its order
    moved = [
        i
        for i, s in before["optimizer"]["state"].items()
        if not torch.equal(s["mu"], after["optimizer"]["state"][i]["mu"])
    ]
    assert len(moved) == PARAMS  # the continued run's momentum, at main.py's positions
    assert not torch.equal(before["model"]["module.bn.running_var"], after["model"]["module.bn.running_var"])


@pytest.mark.slow
def test_continue_under_torchrun_and_resume_with_main_py(bt, image_folder, tmp_path, capsys):
    from e2mc.train.run import load_checkpoint
    from tests.test_cli_torchrun import torchrun

    sets = [
        f"data.dataset={image_folder}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.image_size=32",
        "data.num_workers=0",
        "optim.batch_size=4",
        "optim.lr=0.01",
        "optim.restore_state=true",
        "optim.exclude_bias_and_norm=true",
        "model.sync_bn=true",
        "train.precision=bf16",
        "train.max_steps=2",
        "train.log_every=1",
        "train.probe_size=0",
        "train.tensorboard=false",
    ]
    out = tmp_path / "run"
    args = ["continue", bt / "checkpoint.pth", "--addon", "e2mc", "--device", "cpu", "--out", out]
    res = torchrun([*args, *(a for o in sets for a in ("--set", o))], cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert f"restored the optimiser state of {PARAMS} parameters" in res.stderr
    st = load_checkpoint(out / "checkpoints" / "last.pt")
    assert st["world_size"] == 2 and st["step"] == 2 and st["method"] == "barlowtwins"
    assert int(st["model"]["bn.num_batches_tracked"]) == 4 + 4  # one global-batch update per view and step
    exported = tmp_path / "checkpoint.pth"
    assert main(["export", str(out / "checkpoints" / "last.pt"), "--to", "original", "--out", str(exported)]) == 0
    assert "barlowtwins layout" in capsys.readouterr().out
    got = official_reload(exported)
    assert got["epoch"] == 100 + st["epoch"] and got["groups"] == [WEIGHTS, BIASES] and got["with_mu"] == PARAMS
    back, source = (torch.load(p, weights_only=True)["model"] for p in (exported, bt / "checkpoint.pth"))
    assert list(back) == list(source) and all(back[k].dtype == source[k].dtype for k in source)
    assert not torch.equal(back["module.projector.6.weight"], source["module.projector.6.weight"])
