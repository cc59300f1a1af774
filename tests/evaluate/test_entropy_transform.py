"""One transform per run: the entropy protocol maps the projector outputs with the run's training
``addon.transform`` (what its monitor logged), the method's default when the checkpoint holds no
run config, or ``eval.entropy.transform`` when set, and says which."""

import pytest
import torch

from e2mc import metrics
from e2mc.evaluation.api import evaluate
from e2mc.evaluation.features import extract_features
from e2mc.models.checkpoints import load_model


@pytest.fixture(scope="module")
def gaussian_run(tmp_path_factory):
    """A 2-step VICReg + E2MC run on digits trained with addon.transform=gaussian_cdf (VICReg's
    default is sigmoid)."""
    import e2mc

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("entropy_run")
    return e2mc.pretrain(
        "digits_vicreg_pretrain",
        addon__name="e2mc",
        addon__transform="gaussian_cdf",
        train__max_steps=2,
        train__epochs=1,
        train__device="cpu",
        train__probe_size=0,
        train__tensorboard=False,
        out__dir=str(root / "run"),
    )


def test_one_run_evaluated_both_ways(gaussian_run, tmp_path):
    settings = {"eval.device": "cpu", "eval.cache_dir": str(tmp_path)}
    from_run = evaluate(gaussian_run, "digits", ("entropy",), settings)["entropy"]
    assert from_run["transform"] == "gaussian_cdf"
    assert from_run["transform_source"] == "the run's addon.transform (its training config)"

    model, _ = load_model(str(gaussian_run / "checkpoints" / "last.pt"))  # the same weights, no run config
    default = evaluate(model, "digits", ("entropy",), settings)["entropy"]
    assert default["transform"] == "sigmoid" and default["transform_source"].startswith("the method's default (vicreg")

    # each is E2MC's entropy of the same projector features under its own transform, and they differ
    from e2mc.data.datasets import build_dataset

    z = extract_features(model, build_dataset("digits", "test"), which=("backbone", "projector"), use_cache=False)
    assert from_run["entropy"] == pytest.approx(metrics.marginal_entropy(z["projector"], "gaussian_cdf"), rel=1e-5)
    assert default["entropy"] == pytest.approx(metrics.marginal_entropy(z["projector"], "sigmoid"), rel=1e-5)
    assert abs(from_run["entropy"] - default["entropy"]) > 1e-3

    chosen = evaluate(gaussian_run, "digits", ("entropy",), {**settings, "eval.entropy.transform": "sigmoid"})
    assert chosen["entropy"]["transform"] == "sigmoid"
    assert chosen["entropy"]["transform_source"] == "eval.entropy.transform"
    assert chosen["entropy"]["entropy"] == pytest.approx(default["entropy"], rel=1e-6)
