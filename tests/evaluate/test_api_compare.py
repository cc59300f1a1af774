import json

import pytest

from e2mc.errors import ConfigError, DataError
from e2mc.evaluate.api import evaluate
from e2mc.evaluate.compare import ComparisonResult, build_rows, compare, metric_values, parse_arm


def test_evaluate_structure(tiny_net, colour_data, tmp_path):
    res = evaluate(tiny_net, colour_data, protocols=("knn", "linear", "fewshot", "rankme", "uniformity", "spectrum"),
                   seeds=(0, 1), ks=(1, 5), shots=(1, 3), cache_dir=tmp_path, device="cpu")
    assert set(res["knn"]) == {"top1_k1", "top1_k5"}
    assert 0 <= res["linear"]["top1"] <= 1 and "weight_decay" in res["linear"]
    assert len(res["fewshot"]["per_seed"]["top1_3shot"]) == 2
    assert 1 <= res["rankme"]["backbone"] <= 8 and 1 <= res["rankme"]["projector"] <= 6
    assert len(res["spectrum"]["backbone"]) == 8
    json.dumps(res)  # JSON-serialisable
    # colour-coded classes: a random conv net still separates them well
    assert res["knn"]["top1_k5"] > 0.8


def test_evaluate_bad_protocol(tiny_net, colour_data):
    with pytest.raises(ConfigError, match="unknown protocol"):
        evaluate(tiny_net, colour_data, protocols=("knn", "bogus"))


def test_compare_table_with_differences(colour_data, tmp_path, make_tiny_net):
    arms = [make_tiny_net(0), make_tiny_net(1)]
    res = compare(arms, names=["base", "e2mc"], dataset=colour_data, protocols=("knn", "fewshot"), seeds=(0, 1, 2),
                  ks=(1, 5), shots=(2,), cache_dir=tmp_path, device="cpu")
    r = res.row("e2mc", "fewshot/top1_2shot")
    a = res.row("base", "fewshot/top1_2shot")
    assert r["n"] == 3 and r["diff"] == pytest.approx(r["mean"] - a["mean"])
    assert r["diff_kind"] == "paired over evaluation seeds" and r["diff_low"] <= r["diff"] <= r["diff_high"]
    k = res.row("e2mc", "knn/top1_k5")
    assert k["n"] == 1 and k["diff_low"] is None and "no interval" in k["diff_kind"]
    md = res.to_markdown()
    assert "| metric | base | e2mc | e2mc − base |" in md and "| fewshot/top1_2shot (%) | 100.00 ± 0.00 (3) |" in md
    back = ComparisonResult.from_json(res.to_json())
    assert back.rows == json.loads(res.to_json())["rows"]


def test_rows_over_training_seeds_use_welch():
    stats = pytest.importorskip("scipy.stats")
    mk = lambda v: {"knn": {"top1_k20": v}}  # noqa: E731
    a, b = [0.80, 0.82, 0.81], [0.85, 0.84, 0.88]
    rows = build_rows(["A", "B"], [[mk(v) for v in a], [mk(v) for v in b]])
    rb = next(r for r in rows if r["arm"] == "B")
    ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval()
    assert rb["n"] == 3 and (rb["diff_low"], rb["diff_high"]) == pytest.approx((ci.low, ci.high))
    assert rb["diff_kind"].startswith("Welch")


def test_parse_arm_and_metric_values(tmp_path):
    assert parse_arm("e2mc=a.pt,b.pt") == ("e2mc", ["a.pt", "b.pt"])
    assert parse_arm("x.pt") == (None, ["x.pt"])
    vals = metric_values({"meta": {}, "fewshot": {"top1_1shot": 0.5, "per_seed": {"top1_1shot": [0.4, 0.6]},
                                                  "top1_1shot_ci95": [0.1, 0.9], "weight_decay": 0.01}})
    assert vals == {"fewshot/top1_1shot": [0.4, 0.6]}
    with pytest.raises(DataError, match="no checkpoint"):
        compare([str(tmp_path / "missing.pt")], dataset="digits")

