"""Files written the official repositories' way: `e2mc inspect` and `load_model` read them whole."""

import pytest
import torch

from e2mc.cli import main
from e2mc.models import load_model
from tests.official.conftest import official_name

CASES = [
    "vicreg_model_main",
    "vicreg_model_module",
    "vicreg_resnet50_main",
    "vicreg_resnet50_module",
    "swav_checkpoint",
    "swav_release",
    "simsiam_checkpoint",
    "byol_checkpoint",
]


@pytest.mark.parametrize("case", CASES)
def test_inspect_shows_layout_method_arch(official, case, capsys, one_torch_thread):
    f = official[case]
    assert main(["inspect", str(f.path)]) == 0
    out = capsys.readouterr().out
    rows = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
    assert rows["format"] == f.format
    assert rows["arch"] == "resnet18"
    assert rows["method"] == (f.method or "-")
    if case.startswith("vicreg_model"):  # the pickled filter function, under the module it was written from
        assert f"stand-in   : {f.module or '__main__'}.exclude_bias_and_norm (inert" in out
    if case == "swav_checkpoint":  # main_swav.py's lr_schedule[iteration]: numpy float64 in param_groups
        assert "multiarray.scalar (data only)" in out


@pytest.mark.parametrize("case", CASES)
def test_load_model_reads_every_generated_tensor(official, case, one_torch_thread):
    f = official[case]
    model, report = load_model(f.path)
    assert (report.format, report.arch, report.method) == (f.format, "resnet18", f.method)
    expected = f.expected()
    loaded = model.state_dict()
    names = {k: official_name(case, k) for k in loaded}
    compared = {k: n for k, n in names.items() if n is not None}
    for k, n in compared.items():
        assert n in expected, f"{k} -> {n} is not a tensor of the generated model"
        assert torch.equal(loaded[k], expected[n]), k
    # every tensor the file holds went somewhere: all of the generated model, or its backbone
    want = {n for n in expected if not case.startswith("vicreg_resnet50") or n.startswith("module.backbone.")}
    if case == "byol_checkpoint":  # solo-learn's online linear probe is not part of the SSL model
        assert sorted(report.dropped) == ["classifier.bias", "classifier.weight"]
        assert (
            report.heads == ["projector", "predictor"]
            and report.heads_built == []
            and report.teachers["target"]["loaded"]
        )
        want = {n for n in want if not n.startswith("classifier.")}
    assert set(compared.values()) == want
    if case in ("vicreg_model_main", "vicreg_model_module", "swav_checkpoint", "simsiam_checkpoint", "byol_checkpoint"):
        assert report.optimizer_state is not None


@pytest.mark.parametrize(
    "case", ["vicreg_model_main", "vicreg_model_module", "swav_checkpoint", "simsiam_checkpoint", "byol_checkpoint"]
)
def test_generated_files_resume_the_official_way(official, case):
    """The harness itself: each generated file resumes through the generator's official path."""
    import json

    from tests.official.conftest import run_generator

    f = official[case]
    got = json.loads(run_generator(f.gen, "reload", str(f.path), module=f.module).strip().splitlines()[-1])
    assert got["epoch"] == {"vicreg": 100, "swav": 800, "simsiam": 100, "byol": 999}[f.format]
    if f.format == "byol":  # Lightning's restore, main_linear.py's backbone, the trainer's LARS and a step
        assert got["resumed"] and got["with_momentum"] == got["params"] == 74 and got["target_moved"]
        assert got["groups"] == ["backbone", "classifier", "projector", "predictor"]
        assert got["linear_missing"] == ["fc.bias", "fc.weight"] and not got["linear_unexpected"]
    elif f.format == "vicreg":
        assert got["filters_are_this_module"] and got["module"] == (f.module or "__main__")
        assert got["with_mu"] == got["params"]
    elif f.format == "swav":
        assert got["with_momentum"] == got["params"] and got["lr_type"] == "float64"
    else:
        assert got["with_momentum"] == got["params"] - 1  # encoder.fc.6.bias never gets a gradient
        assert got["fix_lr"] == [False, True]
