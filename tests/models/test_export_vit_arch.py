"""A timm ViT of no official size (the CIFAR-10 DINO start's 32 px / patch 4 / 3 x 64 / 2 heads) has
weights that do not tell its architecture (the head count): a DINO export names it in ``args.arch``
and loads again without ``--arch``; a layout that cannot name it says, when written, which
``--arch`` reads it back; and a file that needs one says what to pass."""

import torch

from e2mc.cli import main
from e2mc.models.checkpoints import load_model
from e2mc.models.export import export_model

VIT = "timm:vit_tiny_patch16_224:img_size=8,patch_size=4,depth=1,embed_dim=16,num_heads=2"


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_dino_export_names_the_vit_and_loads_back_without_arch(tmp_path, one_torch_thread):
    model, report = load_model("random:" + VIT, method="dino")
    path = export_model(model, report, tmp_path / "checkpoint.pth", "dino")
    args = torch.load(path, weights_only=False)["args"]
    assert args.arch == VIT and args.patch_size == 4  # main_dino.py's Namespace, e2mc's spec in it
    back, rep = load_model(path)
    assert (rep.arch, rep.method, rep.format) == (VIT, "dino", "dino") and _same(model, back)
    official, rep0 = load_model("random:timm:vit_tiny_patch16_224", method="dino")
    args = torch.load(export_model(official, rep0, tmp_path / "o.pth", "dino"), weights_only=False)["args"]
    assert (args.arch, args.patch_size) == ("vit_tiny", 16)  # an official size: named as main_dino.py names it


def test_backbone_export_says_which_arch_reads_it_and_the_refusal_says_what_to_pass(tmp_path, capsys):
    src = tmp_path / "start.pth"
    model, report = load_model("random:" + VIT, method="dino")
    export_model(model, report, src, "dino")
    out = tmp_path / "backbone.pth"
    assert main(["export", str(src), "--to", "TIMM", "--out", str(out)]) == 0  # layout names: any case
    said = capsys.readouterr().out
    assert f"load the file with --arch '{VIT}'" in said
    assert main(["inspect", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pass --arch NAME" in err and "timm:NAME:key=value" in err
    assert main(["inspect", str(out), "--arch", VIT]) == 0
    capsys.readouterr()
    assert main(["export", str(src), "--to", "dino", "--out", str(tmp_path / "again.pth")]) == 0
    assert "note:" not in capsys.readouterr().out  # the DINO layout names it


def test_a_file_naming_a_network_that_cannot_be_built_names_the_file(tmp_path, capsys, one_torch_thread):
    model, report = load_model("random:" + VIT, method="dino")
    path = export_model(model, report, tmp_path / "checkpoint.pth", "dino")
    obj = torch.load(path, weights_only=False)
    obj["args"].arch = "timm:vit_nonexistent_patch4:depth=1"  # a file edited by hand, or of a newer timm
    torch.save(obj, path)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "vit_nonexistent_patch4" in err, err
    assert "pass --arch NAME" in err
    assert main(["inspect", str(path), "--arch", VIT]) == 0  # what it says to do works
