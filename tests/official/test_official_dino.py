"""DINO files written the way facebookresearch/dino's main_dino.py writes them (tests/official/gen_dino.py,
checked against the official code): loaded (method, heads, teacher, centre), continued (one process
and 2-process ``torchrun``), exported ``--to original`` and resumed by the official path."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from e2mc.cli import main
from e2mc.models.checkpoints import load_model
from tests.official.conftest import ROOT, Official, generator_cmd, run_generator

TINY = [
    "data.image_size=32",
    "data.num_workers=0",
    "optim.batch_size=8",
    "optim.schedule=constant",
    "optim.lr=0.001",
    "train.probe_size=0",
    "train.tensorboard=false",
]


@pytest.fixture(scope="module")
def dino(tmp_path_factory) -> dict[str, Official]:
    root = tmp_path_factory.mktemp("official_dino")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(generator_cmd("gen_dino.py", "generate", str(root)), capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    t, tv = root / "checkpoint.tensors.pt", root / "checkpoint_vit.tensors.pt"
    return {
        "checkpoint": Official(root / "checkpoint.pth", t, "dino", "dino", "gen_dino.py"),
        "release": Official(root / "dino_resnet18_pretrain.pth", t, "torchvision", None, "gen_dino.py"),
        "vit": Official(root / "checkpoint_vit.pth", tv, "dino", "dino", "gen_dino.py"),
        "vit_release": Official(root / "dino_vittiny16_pretrain.pth", tv, "timm", None, "gen_dino.py"),
    }


def reload(path) -> dict:
    return json.loads(run_generator("gen_dino.py", "reload", str(path)).strip().splitlines()[-1])


def _sets(images, *extra):
    return [a for o in [f"data.dataset={images}", *TINY, *extra] for a in ("--set", o)]


def test_checkpoint_loads_student_teacher_and_centre(dino, capsys, one_torch_thread):
    f = dino["checkpoint"]
    model, report = load_model(f.path)
    assert (report.format, report.method, report.arch) == ("dino", "dino", "resnet18")
    assert report.heads == ["head"] and report.heads_built == [] and report.epoch == 100
    n = len(model.teacher.state_dict())  # the momentum teacher on its own line, not among the heads
    assert report.teachers == {"teacher": {"tensors": n, "loaded": True}}
    assert f"\nteacher    : teacher: {n} tensors, loaded from {f.path}\n" in report.summary()
    assert report.head_sizes == {"hidden": 64, "bottleneck": 32, "out": 128, "nlayers": 3, "use_bn": 0}
    want = f.expected()
    sd = model.state_dict()
    for k, v in want.items():
        if k.startswith("student.module."):
            assert torch.equal(sd[k[len("student.module.") :]], v), k
        elif k.startswith("teacher.module."):
            assert torch.equal(sd["teacher." + k[len("teacher.module.") :]], v), k
    assert not torch.equal(sd["teacher.head.mlp.0.weight"], sd["head.mlp.0.weight"])  # the file's own teacher
    assert torch.equal(report.method_state["center"], want["center"])
    assert not model.head.last_layer.weight_g.requires_grad  # norm_last_layer
    assert main(["inspect", str(f.path)]) == 0
    out = capsys.readouterr().out
    assert "method     : dino" in out and "\nheads      : head\n" in out and "own state  : stored" in out
    assert f"\nteacher    : teacher: {n} tensors, loaded from {f.path}\n" in out  # `e2mc inspect`: its own line


def test_backbone_release_and_a_file_without_its_centre(dino, tmp_path, one_torch_thread):
    model, report = load_model(dino["release"].path)
    assert report.format == "torchvision" and report.method is None and report.arch == "resnet18"
    model, report = load_model(dino["release"].path, method="dino")
    assert report.heads_built == ["head"] and any("no momentum teacher" in n for n in report.notes)
    obj = torch.load(dino["checkpoint"].path, weights_only=False)
    del obj["dino_loss"]
    torch.save(obj, tmp_path / "no_center.pth")
    _, report = load_model(tmp_path / "no_center.pth")
    assert report.method_state is None and any("re-estimates it" in n for n in report.notes)


def test_continued_exported_and_resumed_by_restart_from_checkpoint(dino, image_folder, tmp_path, capsys):
    f = dino["checkpoint"]
    run, out = tmp_path / "run", tmp_path / "exported" / "checkpoint.pth"
    sets = _sets(image_folder, "train.epochs=1", "optim.name=adamw", "optim.restore_state=true")
    assert main(["continue", str(f.path), *sets, "--addon", "e2mc", "--out", str(run)]) == 0
    said = capsys.readouterr()
    assert "DINO centre: the file's" in said.out + said.err
    assert "restored the optimiser state of 66 parameters" in said.out + said.err
    assert main(["export", str(run / "checkpoints" / "last.pt"), "--out", str(out), "--to", "original"]) == 0
    src, back = (torch.load(p, weights_only=False) for p in (f.path, out))
    assert list(back) == list(src)  # student, teacher, optimizer, epoch, args, dino_loss, fp16_scaler
    assert list(back["student"]) == list(src["student"]) and list(back["teacher"]) == list(src["teacher"])
    assert not torch.equal(back["dino_loss"]["center"], src["dino_loss"]["center"])  # the continued centre
    got = reload(out)  # restart_from_checkpoint (strict here), then one official step
    assert got["strict"] and got["epoch"] == 101 and got["center"] and got["loss_finite"]
    assert got["with_state"] == 66 and got["params"] == 67


@pytest.mark.parametrize("addon", ["vc", "uniformity", "mmcr", "none"])
def test_each_addon_continues_the_official_file(dino, image_folder, tmp_path, addon, capsys, one_torch_thread):
    sets = _sets(image_folder, "train.max_steps=1", "train.log_every=1")
    assert main(["continue", str(dino["checkpoint"].path), *sets, "--addon", addon, "--out", str(tmp_path)]) == 0
    head = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "base.teacher_entropy" in head
    assert addon == "none" or any(c.startswith("addon.") for c in head), head


@pytest.mark.slow
def test_continued_under_torchrun_and_resumed_officially(dino, image_folder, tmp_path, capsys):
    from tests.test_cli_torchrun import torchrun

    f, run = dino["checkpoint"], tmp_path / "run"
    sets = _sets(image_folder, "train.max_steps=2", "train.log_every=1", "optim.batch_size=4")
    res = torchrun(["continue", f.path, *sets, "--addon", "e2mc", "--device", "cpu", "--out", run], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "DINO centre: the file's" in res.stderr + res.stdout
    from e2mc.train.run import load_checkpoint

    st = load_checkpoint(run / "checkpoints" / "last.pt")
    assert st["world_size"] == 2 and st["step"] == 2 and st["dino_center"]["known"] is True
    out = tmp_path / "checkpoint.pth"
    assert main(["export", str(run / "checkpoints" / "last.pt"), "--to", "original", "--out", str(out)]) == 0
    assert "dino layout" in capsys.readouterr().out
    got = reload(out)
    assert got["strict"] and got["epoch"] == 100 and got["center"] and got["loss_finite"]


def test_a_file_trained_without_norm_last_layer_says_how_to_continue_it(dino, tmp_path, one_torch_thread):
    obj = torch.load(dino["checkpoint"].path, weights_only=False)
    obj["args"].norm_last_layer = False
    torch.save(obj, tmp_path / "free_g.pth")
    _, report = load_model(tmp_path / "free_g.pth")
    assert any("method.norm_last_layer=false" in n for n in report.notes)


def test_a_vit_is_continued_with_adamw_at_a_small_lr_unless_told(dino, tmp_path):
    """LARS at 0.2 (the ResNet methods' default) made a new user's DINO ViT and MoCo v3 ViT files
    collapse in 2-3 steps: a ViT continued without an optimiser or LR of the user's gets AdamW at 1e-4,
    weight decay 0.04, the file or the release alike; a ResNet keeps the method's default."""
    from e2mc.train.api import resolve_config

    out = f"out.dir={tmp_path / 'r'}", "data.dataset=digits"
    for key in ("vit", "vit_release"):
        o = resolve_config("continue", None, [f"model.init={dino[key].path}", *out]).optim
        assert (o.name, o.lr, o.weight_decay) == ("adamw", 1e-4, 0.04), key
    o = resolve_config("continue", None, [f"model.init={dino['vit'].path}", "optim.lr=0.01", *out]).optim
    assert (o.name, o.lr) == ("lars", 0.01)  # the user's LR: the rest stays as configured
    for key in ("checkpoint", "release"):  # DINO's ResNet files
        o = resolve_config("continue", None, [f"model.init={dino[key].path}", "method.name=dino", *out]).optim
        assert o.name == "lars", key


def test_evaluate_scores_the_teacher_on_request(dino, image_folder, tmp_path):
    """DINO's own eval_knn.py / eval_linear.py score the teacher: eval.network=teacher scores it (the
    same numbers as a model holding the teacher's weights as its backbone), in features of its own."""
    import copy
    import dataclasses

    from e2mc.errors import ConfigError
    from e2mc.evaluation.api import evaluate
    from e2mc.evaluation.settings import EvalSettings

    model, _ = load_model(dino["vit"].path)
    torch.manual_seed(0)
    with torch.no_grad():  # a teacher far from the student (the generated file's differ by 1e-7)
        for p in model.teacher["backbone"].parameters():
            p.add_(0.5 * torch.randn_like(p))
    st = EvalSettings(test_split="train", cache_dir=str(tmp_path / "cache"), device="cpu")
    student = evaluate(model, str(image_folder), ["rankme"], st)
    teacher = evaluate(model, str(image_folder), ["rankme"], dataclasses.replace(st, network="teacher"))
    same = copy.deepcopy(model)
    same.backbone.load_state_dict(model.teacher["backbone"].state_dict())
    same.head.load_state_dict(model.teacher["head"].state_dict())  # the head embedding: the teacher's too
    ref = evaluate(same, str(image_folder), ["rankme"], dataclasses.replace(st, use_cache=False))
    assert teacher["rankme"] == ref["rankme"] and teacher["rankme"] != student["rankme"]
    assert teacher["meta"]["network"] == "teacher" and student["meta"]["has_teacher"]
    plain, _ = load_model("random:resnet_mini", method="vicreg")
    with pytest.raises(ConfigError, match="no momentum teacher"):
        evaluate(plain, str(image_folder), ["rankme"], dataclasses.replace(st, network="teacher"))


def test_a_dino_vit_is_not_written_in_the_dinov2_layout(dino, tmp_path):
    """A DINO (v1) ViT has no LayerScale: the dinov2 layout's file would not load back (a new user's
    trial: `inspect` refused it for its mask_token); refused, nothing written."""
    from e2mc.errors import CheckpointError
    from e2mc.models.export import export_model

    model, report = load_model(dino["vit"].path)
    with pytest.raises(CheckpointError, match="holds DINOv2 vision transformers.*export --to dino"):
        export_model(model, report, tmp_path / "v2.pth", format="dinov2")
    assert not (tmp_path / "v2.pth").exists()


def test_vit_checkpoint_loaded_continued_exported_and_resumed(dino, image_folder, tmp_path, capsys):
    f = dino["vit"]
    model, report = load_model(f.path)
    assert (report.format, report.method, report.arch) == ("dino", "dino", "timm:vit_tiny_patch16_224")
    assert (
        report.layout["teacher_module"] is False and report.heads == ["head"] and report.teachers["teacher"]["loaded"]
    )
    want, sd = f.expected(), model.state_dict()
    assert torch.equal(sd["teacher.backbone.pos_embed"], want["teacher.backbone.pos_embed"])  # no module.
    assert torch.equal(sd["backbone.cls_token"], want["student.module.backbone.cls_token"])
    _, release = load_model(dino["vit_release"].path)
    assert (release.format, release.arch) == ("timm", "timm:vit_tiny_patch16_224")  # strict, timm's keys
    run, out = tmp_path / "run", tmp_path / "checkpoint.pth"
    sets = _sets(image_folder, "train.max_steps=1", "optim.name=adamw", "optim.restore_state=true")
    assert main(["continue", str(f.path), *sets, "--addon", "e2mc", "--out", str(run)]) == 0
    assert "restored the optimiser state of 156 parameters" in "".join(capsys.readouterr())
    assert main(["export", str(run / "checkpoints" / "last.pt"), "--out", str(out), "--to", "original"]) == 0
    back, src = (torch.load(p, weights_only=False) for p in (out, f.path))
    assert list(back["teacher"]) == list(src["teacher"]) and list(back["student"]) == list(src["student"])
    got = reload(out)
    assert got["strict"] and got["args_arch"] == "vit_tiny" and got["loss_finite"] and got["with_state"] == 156
