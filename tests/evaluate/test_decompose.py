"""The risk decomposition (Dubois et al. 2023): the components sum to the test error, and synthetic
features with a known answer give the expected dominant component."""

import math

import pytest
import torch

from e2mc.errors import DataError
from e2mc.evaluation.decompose import COMPONENTS, risk_decomposition, subset_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # two threads on a shared 2-core box spin-wait
WDS = (1e-5, 1e-3, 1e-1)
FAST = dict(weight_decays=WDS, min_steps=400, batch_size=256)


def _labels(n, c, g):
    return torch.arange(n) % c if g is None else torch.randint(0, c, (n,), generator=g)


def _total(res) -> float:
    return math.fsum(res[k] for k in COMPONENTS if k in res)


def _check_sum(res):
    assert _total(res) == pytest.approx(res["test_error"], abs=1e-12)
    fits = res["fits"]
    assert res["test_error"] == fits["train_test"]["error"]
    assert res["probe_generalisation"] == fits["comp_sub"]["error"] - fits["train_train"]["error"]


def test_a_probe_that_overfits_is_probe_generalisation():
    """200-dim noise, 160 training rows, labels unrelated to the features: the probe fits the
    training rows (train->train ~ 0) and is at chance elsewhere, on seen and unseen rows alike."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(160, 200, generator=g), _labels(160, 4, g)
    xt, yt = torch.randn(80, 200, generator=g), _labels(80, 4, g)
    res = risk_decomposition(x, y, xt, yt, subset=40, **FAST)
    _check_sum(res)
    assert res["fits"]["train_train"]["error"] < 0.05 and res["probe_generalisation"] > 0.5
    assert res["dominant"] == "probe_generalisation" and "approximation" not in res
    assert "merged into usability" in res["approximation_note"]
    assert res["sizes"] == {"train": 160, "complement": 120, "subset": 40, "test": 80, "seen": 160}


def test_features_that_are_not_linearly_separable_are_usability():
    """XOR of two coordinates: no linear probe beats chance anywhere, on training rows included."""
    g = torch.Generator().manual_seed(1)

    def xor(n):
        x = torch.randn(n, 2, generator=g)
        return torch.cat([x, 0.01 * torch.randn(n, 6, generator=g)], 1), ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()

    (x, y), (xt, yt) = xor(600), xor(300)
    res = risk_decomposition(x, y, xt, yt, **FAST)
    _check_sum(res)
    assert res["usability"] > 0.35 and res["dominant"] == "usability"
    assert abs(res["probe_generalisation"]) < 0.15 and abs(res["encoder_generalisation"]) < 0.15
    # the same rows through a supervised reference that cannot fit them either: approximation takes it
    ref = risk_decomposition(x, y, xt, yt, reference_x=x.clone(), **FAST)
    _check_sum(ref)
    assert ref["dominant"] == "approximation" and abs(ref["usability"]) < 0.05
    assert ref["approximation"] == ref["fits"]["reference_train_train"]["error"] and "approximation_note" not in ref


def test_an_encoder_that_memorised_its_images_is_encoder_generalisation():
    """Seen (training) rows carry their class; unseen test rows are noise: only train->test fails."""
    g = torch.Generator().manual_seed(2)
    y, yt = _labels(300, 3, None), _labels(150, 3, None)
    x = torch.nn.functional.one_hot(y, 3).float() * 4 + torch.randn(300, 3, generator=g)
    xt = torch.randn(150, 3, generator=g)
    res = risk_decomposition(x, y, xt, yt, **FAST)
    _check_sum(res)
    assert res["encoder_generalisation"] > 0.4 and res["dominant"] == "encoder_generalisation"
    assert res["sizes"]["subset"] == 150  # the test set's size by default


def test_the_subset_is_drawn_from_seen_images_and_too_large_is_one_line():
    y = torch.arange(100) % 4
    comp, sub = subset_split(y, 20, seed=0, seen=torch.arange(40))
    assert sub.numel() == 20 and int(sub.max()) < 40 and torch.bincount(y[sub]).tolist() == [5, 5, 5, 5]
    assert sorted(comp.tolist() + sub.tolist()) == list(range(100))
    with pytest.raises(DataError, match=r"subset of 40 images needs more than the 40 seen.*eval.decompose.subset"):
        subset_split(y, 40, seed=0, seen=torch.arange(40))


def _run_checkpoint(path, seed, data=None):
    """An e2mc checkpoint of a random resnet_mini with the run config a trainer stores (its training
    seed and data), as test_integration_cli writes them."""
    from e2mc.models import checkpoints

    torch.manual_seed(seed)
    m, _ = checkpoints.load_model("random:resnet_mini:8-16-32", method="vicreg", head_sizes={"projector": (32, 32)})
    config = {"train": {"seed": seed}, "data": data or {"dataset": "digits", "split": "train", "limit": None}}
    obj = {
        "format": "e2mc",
        "method": "vicreg",
        "arch": "resnet_mini:8-16-32",
        "cifar_stem": True,
        "head_sizes": {"projector": [32, 32]},
        "model": m.state_dict(),
        "epoch": 1,
        "step": 1,
        "config": config,
    }
    torch.save(obj, path)
    return str(path)


SMALL = ["--set", "eval.decompose.min_steps=100", "--set", "eval.decompose.weight_decays=[1e-4,1e-2]"]


def test_cli_decompose_prints_components_with_definitions_and_the_seen_side(tmp_path, capsys, monkeypatch):
    from e2mc.cli import main

    monkeypatch.setenv("E2MC_CACHE", str(tmp_path))
    ck = _run_checkpoint(tmp_path / "a.pt", 0, {"dataset": "digits", "split": "train", "limit": 600})
    args = ["evaluate", ck, "--dataset", "digits", "--protocols", "decompose", "--device", "cpu", *SMALL]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "test error (train->test)" in out and "= the sum of:" in out and "merged into usability" in out
    assert "comp->sub error (probe fit on the training split minus a held-out subset" in out
    assert "600 images of digits / train (the run's data.limit=600), the subset drawn from them" in out
    assert main([*args, "--reference", "random:resnet_mini:8-16-32", "--json"]) == 0
    import json

    res = json.loads(capsys.readouterr().out)["decompose"]
    assert _total(res) == pytest.approx(res["test_error"], abs=1e-12) and "approximation" in res
    assert res["reference"] == "random:resnet_mini:8-16-32" and res["sizes"]["seen"] == 600
    assert res["sizes"]["subset"] == 300  # the test set's size (450), at most half the seen images
    other = _run_checkpoint(tmp_path / "b.pt", 0, {"dataset": "cifar10", "split": "train"})
    assert main(["evaluate", other, "--dataset", "digits", "--protocols", "decompose", "--device", "cpu", *SMALL]) == 0
    assert "trained on cifar10 / train, not on the evaluated digits / train" in capsys.readouterr().out


def test_compare_gives_paired_intervals_per_component(tmp_path):
    from e2mc.evaluation.compare import compare

    arms = [
        [_run_checkpoint(tmp_path / f"{arm}{s}.pt", s + 10 * i) for s in (0, 1)]
        for i, arm in enumerate(("base", "e2mc"))
    ]
    for p in arms[1]:  # the second arm: the same training seeds as the first, other weights
        obj = torch.load(p, weights_only=True)
        obj["config"]["train"]["seed"] -= 10
        torch.save(obj, p)
    settings = {
        "eval.device": "cpu",
        "eval.cache_dir": str(tmp_path / "cache"),
        "eval.decompose.min_steps": 100,
        "eval.decompose.weight_decays": [1e-4, 1e-2],
    }
    res = compare(arms, names=["base", "e2mc"], dataset="digits", protocols=("decompose",), settings=settings)
    for k in ("test_error", "usability", "probe_generalisation", "encoder_generalisation"):
        row = res.row("e2mc", f"decompose/{k}")
        assert row["n"] == 2 and row["diff_kind"] == "paired, n=2" and row["diff_low"] is not None
    assert res.row("e2mc", "decompose/approximation") is None  # no reference: merged, not a row
    assert "| decompose/usability (%) |" in res.to_markdown()
    from e2mc.report import write_report

    paths = write_report(tmp_path / "report", res)  # the stacked bar per arm
    assert paths["decomposition"].is_file() and "Risk decomposition" in paths["markdown"].read_text()


def test_api_reference_model_and_plain_meta(tiny_net, make_tiny_net, colour_data, tmp_path):
    """Through ``evaluate``: an in-memory reference encoder, the meta's settings as plain data."""
    import json

    from e2mc.evaluation.api import evaluate
    from e2mc.evaluation.settings import EvalSettings

    settings = EvalSettings(device="cpu", cache_dir=str(tmp_path))
    settings.decompose.min_steps, settings.decompose.reference = 100, make_tiny_net(1)
    res = evaluate(tiny_net, colour_data, ("decompose",), settings)
    d = res["decompose"]
    assert _total(d) == pytest.approx(d["test_error"], abs=1e-12) and d["reference"] == "TinyNet"
    assert d["sizes"]["subset"] == 30 and d["seen"].startswith("unknown (the checkpoint holds no run config)")
    assert res["meta"]["settings"]["decompose"]["reference"] == "TinyNet"
    json.dumps(res)
