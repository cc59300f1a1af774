"""Per-image linear-probe outcomes (``linear_outcomes``): one fit, the ``linear`` protocol's result, its correctness."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from e2mc.errors import ConfigError
from e2mc.evaluation.linear import linear_probe
from e2mc.tuning import paired, scoring
from e2mc.tuning.outcomes import ensure_protocol
from e2mc.tuning.probes import run_probe

MODEL = "random:resnet_mini:8-16-32"


def _clusters(n_per: int, flip: list[int], seed: int = 0):
    """3 classes far apart in 4-D (any penalty of the grid separates them); test labels at ``flip`` are wrong."""
    g = torch.Generator().manual_seed(seed)
    centres = 20 * torch.eye(3, 4)
    y = torch.arange(3).repeat_interleave(n_per)
    x = centres[y] + torch.randn(len(y), 4, generator=g)
    y_wrong = y.clone()
    y_wrong[flip] = (y[flip] + 1) % 3
    return x, y, y_wrong


@pytest.mark.parametrize("solver", ["lbfgs", "streaming"])
def test_predictions_give_the_known_per_image_outcomes(solver):
    """Separable classes, a few test labels deliberately wrong: exactly those images are the misses."""
    xtr, ytr, _ = _clusters(40, [])
    flip = [0, 7, 55, 119]
    xte, _, yte = _clusters(40, flip, seed=1)
    preds: dict = {}
    res = linear_probe(xtr, ytr, xte, yte, weight_decays=(1e-4, 1e-2), solver=solver, predictions=preds)
    want = "".join("0" if i in flip else "1" for i in range(120))
    assert paired.encode((preds["test"] == yte).tolist()) == want
    assert res["top1"] == pytest.approx(116 / 120) and res["solver"] == solver


def test_predictions_agree_with_sklearn_image_by_image():
    """Digits pixels: the probe's per-image predictions against scikit-learn's logistic regression at the
    selected penalty (same standardisation and objective), and their accuracy is ``top1``."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    keep = x[:1200].std(0) > 0
    xtr, ytr, xte, yte = x[:1200, keep], y[:1200], x[1200:, keep], y[1200:]
    preds: dict = {}
    res = linear_probe(xtr, ytr, xte, yte, predictions=preds)
    assert float((preds["test"] == yte).float().mean()) == res["top1"]
    mean, std = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    ref = LogisticRegression(C=1.0 / (len(ytr) * res["weight_decay"]), max_iter=10000, tol=1e-8)
    ref.fit(((xtr - mean) / std).numpy(), ytr.numpy())
    ref_pred = torch.as_tensor(ref.predict(((xte - mean) / std).numpy()))
    assert float((ref_pred == preds["test"]).float().mean()) >= 0.99  # the same model, up to solver tolerance


@pytest.fixture(scope="module")
def both():
    """``linear`` and ``linear_outcomes`` on the same features and settings (a random network, digits)."""
    from e2mc.evaluation.api import evaluate, evaluation_settings

    torch.set_num_threads(1)
    ensure_protocol()
    settings = evaluation_settings({"eval.use_cache": False, "eval.device": "cpu", "eval.seeds": [3]})
    return evaluate(MODEL, "digits", ("linear", scoring.LINEAR_OUTCOMES), settings)


def test_outcomes_protocol_is_the_linear_protocol_plus_correctness(both):
    lin, out = both["linear"], both[scoring.LINEAR_OUTCOMES]
    assert {k: v for k, v in out.items() if k != "correct"} == lin  # same fit: every number equal
    o = paired.decode(out["correct"])
    assert len(o) == 450 and sum(o) / len(o) == pytest.approx(lin["top1"], abs=1e-6)  # digits' 450 test images
    assert scoring.probe_metrics(both)["linear_top1"] == out["top1"]
    assert scoring.probe_outcomes(both, scoring.LINEAR_OUTCOMES) == out["correct"]


def test_the_tune_fits_each_probes_linear_probe_once(monkeypatch):
    import e2mc.evaluation.linear as linear_mod
    from e2mc.evaluation.api import evaluate, evaluation_settings

    ensure_protocol()
    calls = []
    real = linear_mod.linear_probe
    monkeypatch.setattr(linear_mod, "linear_probe", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    settings = evaluation_settings({"eval.use_cache": False, "eval.device": "cpu", "eval.knn.ks": [20]})
    res = evaluate(MODEL, "digits", scoring.eval_protocols(True, ()), settings)
    assert len(calls) == 1 and "linear" not in res and scoring.probe_metrics(res)["linear_top1"] > 0


def test_evaluate_protocol_list_is_unchanged():
    """The tune's protocols are registered in the tuning process only: e2mc evaluate never lists them."""
    code = (
        "from e2mc.evaluation.protocols import PROTOCOLS; import e2mc.tuning.api; "
        "print(sorted(set(PROTOCOLS) & {'knn_outcomes', 'linear_outcomes'}))"
    )
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert got.strip() == "[]"


def test_a_probe_scored_by_an_older_tune_keeps_its_scores(tmp_path):
    """An older tune scored ``linear`` (no per-image outcomes): its probes are reused, not refused."""
    new = {"protocols": ["knn", "linear_outcomes", "knn_outcomes", "rankme"], "seeds": [0], "dataset": "s.json"}
    old = {**new, "protocols": ["knn", "linear", "knn_outcomes", "rankme"]}
    assert scoring.same_eval(old, new) and scoring.same_eval(None, new) and scoring.same_eval(new, new)
    assert not scoring.same_eval({**old, "seeds": [1]}, new)
    rec = {"label": "none", "overrides": {"addon.name": "none"}, "steps": 3, "train_seconds": 1.0}
    rec.update(eval_seconds=1.0, eval=old, scores={"3": {"knn_top1_k20": 0.5, "linear_top1": 0.6}})
    rec["outcomes"] = {"3": "0110"}
    (tmp_path / "probe.json").write_text(json.dumps(rec))
    job = {"label": "none", "dir": str(tmp_path), "source": "r", "overrides": rec["overrides"], "steps": 3}
    got = run_probe({**job, "eval": new})  # nothing to train or score: the stored scores come back
    assert got["scores"] == rec["scores"] and got["trained_now"] == 0 and "linear_outcomes" not in got
    with pytest.raises(ConfigError, match="other evaluation settings"):
        run_probe({**job, "eval": {**new, "seeds": [1]}})
