"""MoCo v3's ``checkpoint_0099.pth.tar``, written the way facebookresearch/moco-v3's ``main_moco.py``
writes it (``gen_mocov3.py``): loaded (method, heads, momentum encoder, optimiser), continued with
each add-on, continued under 2-process ``torchrun``, exported back and resumed the official way."""

import json

import pytest
import torch

from e2mc.cli import main
from e2mc.models.adapters import ADAPTERS
from e2mc.models.checkpoints import load_model, read_checkpoint
from tests.official.conftest import Official, run_generator
from tests.official.test_official_continue import TINY

N_BASE, N_PRED = 64, 4  # resnet18 less fc (60) + the 2-layer projector (4); the predictor's 4


@pytest.fixture(scope="module")
def moco(tmp_path_factory) -> Official:
    d = tmp_path_factory.mktemp("mocov3")
    run_generator("gen_mocov3.py", "generate", str(d))
    return Official(d / "checkpoint_0099.pth.tar", d / "checkpoint.tensors.pt", "mocov3", "mocov3", "gen_mocov3.py")


def _official_key(key: str) -> str:
    """The DDP-named tensor of ``main_moco.py``'s file that holds SSLModel ``key``."""
    head, _, rest = key.partition(".")
    if head == "momentum_encoder":
        part, _, rest = rest.partition(".")
        return "module.momentum_encoder." + ("fc." if part == "projector" else "") + rest
    return {
        "backbone": "module.base_encoder.",
        "projector": "module.base_encoder.fc.",
        "predictor": "module.predictor.",
    }[head] + rest


def test_the_file_loads_with_its_momentum_encoder_and_optimiser(moco, capsys):
    obj = read_checkpoint(moco.path)[0]
    scores = {name: a.detect(obj) for name, a in ADAPTERS.items()}
    assert max(scores, key=scores.get) == "mocov3" and scores["simsiam"] == scores["lightning"] == 0
    model, report = load_model(moco.path)
    assert (report.format, report.method, report.arch) == ("mocov3", "mocov3", "resnet18")
    assert report.heads == ["projector", "predictor"] and not report.heads_built
    assert report.teachers["momentum_encoder"]["loaded"]
    assert not report.notes  # the teacher came from the file, not copied from the online network
    assert report.head_sizes == {
        "proj_hidden": 64,
        "proj_dim": 16,
        "proj_layers": 2,
        "pred_hidden": 64,
        "pred_last_bn": 0,
    }
    want = moco.expected()
    sd = model.state_dict()
    assert len(sd) == len(want)
    for k, v in sd.items():
        assert torch.equal(v, want[_official_key(k)]), k
    teacher, online = sd["momentum_encoder.projector.0.weight"], sd["projector.0.weight"]
    assert not torch.equal(teacher, online)  # two EMA steps apart: really the file's own teacher
    assert not any(p.requires_grad for p in model.momentum_encoder.parameters())
    ids = [i for g in report.optimizer_state["param_groups"] for i in g["params"]]
    assert ids == list(range(N_BASE)) + list(range(2 * N_BASE, 2 * N_BASE + N_PRED))  # teacher positions out
    assert main(["inspect", str(moco.path)]) == 0
    out = capsys.readouterr().out
    assert "mocov3" in out and "momentum_encoder" in out


def test_simsiam_and_mocov3_state_dicts_are_told_apart():
    t = torch.zeros(1)
    simsiam = {"state_dict": {"module.encoder.conv1.weight": t, "module.predictor.0.weight": t}, "epoch": 1}
    mocov1 = {"state_dict": {"module.encoder_q.conv1.weight": t, "module.encoder_k.conv1.weight": t}}
    assert ADAPTERS["mocov3"].detect(simsiam) == ADAPTERS["mocov3"].detect(mocov1) == 0
    mocov3 = {
        "state_dict": {f"module.{m}.conv1.weight": t for m in ("base_encoder", "momentum_encoder")}
        | {"module.predictor.0.weight": t}
    }
    assert ADAPTERS["mocov3"].detect(mocov3) > 0.5 and ADAPTERS["simsiam"].detect(mocov3) == 0


def _continue(src, images, tmp_path, capsys, *extra, addon="e2mc"):
    run = tmp_path / f"run_{addon}"
    sets = [a for o in [f"data.dataset={images}", *TINY, *extra] for a in ("--set", o)]
    assert main(["continue", str(src), *sets, "--addon", addon, "--out", str(run)]) == 0
    said = capsys.readouterr()
    return said.out + said.err, run


def _reload(path) -> dict:
    return json.loads(run_generator("gen_mocov3.py", "reload", str(path)).strip().splitlines()[-1])


def test_continued_with_lars_momentum_exported_and_resumed_by_main_moco(moco, image_folder, tmp_path, capsys, one_torch_thread):  # fmt: skip
    extra = ("optim.name=lars", "optim.restore_state=true", "method.continue_momentum=0.99")
    said, run = _continue(moco.path, image_folder, tmp_path, capsys, *extra)
    assert f"restored the optimiser state of {N_BASE + N_PRED} parameters" in said
    assert "mocov3 + e2mc" in said
    out = tmp_path / "exported.pth.tar"
    assert main(["export", str(run / "checkpoints" / "last.pt"), "--out", str(out), "--to", "original"]) == 0
    got = _reload(out)  # main_moco.py --resume: model (strict), LARS, GradScaler, one step
    assert got["epoch"] == 101 and got["arch"] == "resnet18"
    assert got["params"] == 2 * N_BASE + N_PRED and got["with_mu"] == N_BASE + N_PRED
    before, after = (torch.load(p, weights_only=True) for p in (moco.path, out))
    assert list(after) == ["epoch", "arch", "state_dict", "optimizer", "scaler"]
    assert list(after["state_dict"]) == list(before["state_dict"])
    assert after["optimizer"]["param_groups"][0]["params"] == before["optimizer"]["param_groups"][0]["params"]
    assert after["scaler"] == before["scaler"]
    for key in ("module.momentum_encoder.fc.3.weight", "module.base_encoder.fc.3.weight"):
        assert not torch.equal(after["state_dict"][key], before["state_dict"][key]), key  # both moved
    moved = [i for i, s in before["optimizer"]["state"].items() if not torch.equal(s["mu"], after["optimizer"]["state"][i]["mu"])]  # fmt: skip
    assert len(moved) == N_BASE + N_PRED


@pytest.mark.parametrize("addon", ["vc", "uniformity", "mmcr", "none"])
def test_every_addon_continues_the_file(moco, image_folder, tmp_path, capsys, one_torch_thread, addon):
    said, run = _continue(moco.path, image_folder, tmp_path, capsys, "train.max_steps=1", addon=addon)
    assert ("mocov3 (no add-on" if addon == "none" else f"mocov3 + {addon}") in said
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "base" in header and "addon" in header


@pytest.mark.slow
def test_the_file_continues_under_torchrun_and_goes_back(moco, image_folder, tmp_path, capsys):
    from tests.test_cli_torchrun import torchrun

    sets = [
        f"data.dataset={image_folder}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.image_size=32",
        "data.num_workers=0",
        "optim.batch_size=4",
        "optim.name=lars",
        "optim.restore_state=true",
        "method.continue_momentum=0.99",
        "train.max_steps=2",
        "train.log_every=1",
        "train.probe_size=0",
        "train.tensorboard=false",
    ]
    out = tmp_path / "run"
    args = ["continue", moco.path, "--addon", "e2mc", "--device", "cpu", "--out", out]
    res = torchrun([*args, *(a for o in sets for a in ("--set", o))], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert f"restored the optimiser state of {N_BASE + N_PRED} parameters" in res.stderr
    st = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert st["world_size"] == 2 and st["step"] == 2
    exported = tmp_path / "back.pth.tar"
    assert main(["export", str(out / "checkpoints" / "last.pt"), "--to", "original", "--out", str(exported)]) == 0
    assert "mocov3 layout" in capsys.readouterr().out
    got = _reload(exported)
    assert got["epoch"] == 100 and got["with_mu"] == N_BASE + N_PRED  # 2 steps: no whole epoch done


TINY_VIT = "timm:vit_small_patch16_224:img_size=32,patch_size=8,embed_dim=32,depth=2,num_heads=4"


@pytest.fixture(scope="module")
def moco_vit(tmp_path_factory) -> Official:
    d = tmp_path_factory.mktemp("mocov3_vit")
    run_generator("gen_mocov3_vit.py", "generate", str(d))
    return Official(d / "checkpoint_0299.pth.tar", d / "checkpoint.tensors.pt", "mocov3", "mocov3", "gen_mocov3_vit.py")


def test_a_vit_file_loads_into_timm_and_computes_what_it_did(moco_vit):
    model, report = load_model(moco_vit.path, arch=TINY_VIT)  # its `arch` says vit_small; the weights are tiny
    assert report.head_sizes == {"proj_hidden": 64, "proj_dim": 16, "proj_layers": 3, "pred_hidden": 64, "pred_last_bn": 1}  # fmt: skip
    ref = torch.load(moco_vit.tensors, weights_only=True)
    sd = model.state_dict()
    for k, v in sd.items():
        official = _official_key(k).replace(".fc.", ".head.")
        assert torch.equal(v, ref["tensors"][official]), k
    out = ref["outputs"]
    model.eval()
    with torch.no_grad():
        z = model.projector(model.backbone(out["x"]))
        k = model.momentum_encoder.projector(model.momentum_encoder.backbone(out["x"]))
        for name, got in (("z", z), ("p", model.predictor(z)), ("k", k)):
            torch.testing.assert_close(got, out[name], rtol=1e-5, atol=1e-5, msg=name)
    ids = [i for g in report.optimizer_state["param_groups"] for i in g["params"]]
    assert len(ids) == 78 - 37  # the momentum encoder's 37 positions taken out
    from e2mc.methods.mocov3 import _MOCO_ARCHS

    assert _MOCO_ARCHS["vit_small"].endswith(":num_heads=12")  # the official ViT-S: 12 heads (timm's has 6)


def test_a_vit_file_continues_with_adamw_and_goes_back(moco_vit, image_folder, tmp_path, capsys, one_torch_thread):
    extra = ("optim.name=adamw", "optim.restore_state=true", "method.continue_momentum=0.99", "train.max_steps=1")
    sets = [a for o in [f"data.dataset={image_folder}", *TINY, *extra] for a in ("--set", o)]
    run = tmp_path / "run"
    assert main(["continue", str(moco_vit.path), "--arch", TINY_VIT, *sets, "--out", str(run)]) == 0
    said = "".join(capsys.readouterr())
    # every AdamW moment of the file; pos_embed and patch_embed (frozen there) start fresh here
    assert "restored the optimiser state of 38 parameters (adam" in said and "3 without a stored buffer" in said
    out = tmp_path / "back.pth.tar"
    assert main(["export", str(run / "checkpoints" / "last.pt"), "--out", str(out), "--to", "original"]) == 0
    got = json.loads(run_generator("gen_mocov3_vit.py", "reload", str(out)).strip().splitlines()[-1])
    assert got == {"epoch": 300, "arch": "vit_small", "params": 78, "with_moments": 38}


def test_a_model_of_another_origin_exports_to_a_file_main_moco_resumes(tmp_path):
    """No source layout: main_moco.py's defaults (LARS group, fresh state, a GradScaler's start)."""
    from e2mc.models.export import export_model
    from e2mc.models.model import SSLModel

    model = SSLModel.build("mocov3", "resnet18", proj_hidden=64, proj_dim=16, pred_hidden=64)
    out = export_model(model, None, tmp_path / "fresh.pth.tar", "mocov3", epoch=3)
    got = _reload(out)
    assert got == {
        "epoch": 3,
        "arch": "resnet18",
        "params": 2 * N_BASE + N_PRED,
        "with_mu": 0,
        "group": ["lr", "momentum", "trust_coefficient", "weight_decay"],
        "scale": 65536.0,
    }
