import json

import pytest
import torch
from scipy import stats

from e2mc.errors import ConfigError, DataError
from e2mc.evaluation.api import evaluate
from e2mc.evaluation.compare import ComparisonResult, build_rows, compare, metric_values, parse_arm
from e2mc.evaluation.settings import EvalSettings


def test_evaluate_structure(tiny_net, colour_data, tmp_path):
    settings = EvalSettings(seeds=(0, 1), cache_dir=str(tmp_path), device="cpu")
    settings.knn.ks, settings.fewshot.shots = (1, 5), (1, 3)
    res = evaluate(tiny_net, colour_data, ("knn", "linear", "fewshot", "rankme", "uniformity", "spectrum"), settings)
    assert set(res["knn"]) == {"top1_k1", "top1_k5", "uar_k1", "uar_k5"}
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
    with pytest.raises(ConfigError, match=r"eval.linear.solver='sgd' is not valid; give one of auto, lbfgs, streaming"):
        evaluate(tiny_net, colour_data, ("linear",), {"eval.linear.solver": "sgd"})


def test_evaluate_passes_the_linear_solver(tiny_net, colour_data, tmp_path):
    kw = {"eval.cache_dir": str(tmp_path), "eval.device": "cpu"}
    assert evaluate(tiny_net, colour_data, ("linear",), kw)["linear"]["solver"] == "lbfgs"  # auto: a small problem
    res = evaluate(tiny_net, colour_data, ("linear",), {**kw, "eval.linear.solver": "streaming"})["linear"]
    assert res["solver"] == "streaming" and res["converged"] is None and res["streaming"]["steps"] >= 1000
    json.dumps(res)


def test_compare_paired_interval_over_evaluation_seeds(tmp_path, make_tiny_net):
    """A harder task (weak colour signal): the few-shot scores spread over evaluation seeds, and
    the difference's interval is scipy's paired t-interval of them."""
    from tests.evaluate.conftest import colour_dataset

    data = colour_dataset(20, seed=0, signal=10), colour_dataset(10, seed=1, signal=10)
    res = compare(
        [make_tiny_net(0), make_tiny_net(1)],
        names=["base", "e2mc"],
        dataset=data,
        protocols=("fewshot",),
        settings={
            "eval.seeds": [0, 1, 2],
            "eval.fewshot.shots": [2],
            "eval.cache_dir": str(tmp_path),
            "eval.device": "cpu",
        },
    )
    r, a = res.row("e2mc", "fewshot/top1_2shot"), res.row("base", "fewshot/top1_2shot")
    diffs = [x - y for x, y in zip(r["values"], a["values"])]
    assert max(diffs) - min(diffs) > 0.01  # a real spread, so the check below is a real check
    ci = stats.ttest_rel(r["values"], a["values"]).confidence_interval(0.95)
    assert (r["diff_low"], r["diff_high"]) == pytest.approx((ci.low, ci.high))
    assert r["diff_kind"] == "paired over evaluation seeds, n=3"


def test_compare_table_with_differences(colour_data, tmp_path, make_tiny_net):
    arms = [make_tiny_net(0), make_tiny_net(1)]
    res = compare(
        arms,
        names=["base", "e2mc"],
        dataset=colour_data,
        protocols=("knn", "fewshot"),
        settings={
            "eval.seeds": [0, 1, 2],
            "eval.knn.ks": [1, 5],
            "eval.fewshot.shots": [2],
            "eval.cache_dir": str(tmp_path),
            "eval.device": "cpu",
        },
    )
    r = res.row("e2mc", "fewshot/top1_2shot")
    a = res.row("base", "fewshot/top1_2shot")
    assert r["n"] == 3 and r["diff"] == pytest.approx(r["mean"] - a["mean"])
    assert r["diff_kind"] == "paired over evaluation seeds, n=3" and r["spread"] == "evaluation seeds"
    # both arms score 100% on every evaluation seed here: no spread, the degenerate interval
    assert set(r["values"]) == set(a["values"]) == {1.0}
    assert (r["diff_low"], r["diff_high"]) == pytest.approx((r["diff"], r["diff"]))
    k = res.row("e2mc", "knn/top1_k5")
    assert k["n"] == 1 and k["diff_low"] is None and "no interval" in k["diff_kind"]
    md = res.to_markdown()
    assert "| metric | base | e2mc | e2mc − base |" in md and "| fewshot/top1_2shot (%) † | 100.00 ± 0.00 (3) |" in md
    assert "evaluation noise, not training variance" in md
    back = ComparisonResult.from_json(res.to_json())
    assert back.rows == json.loads(res.to_json())["rows"]


def test_rows_over_training_seeds_use_welch_without_seeds():
    mk = lambda v: {"knn": {"top1_k20": v}}  # noqa: E731
    a, b = [0.80, 0.82, 0.81], [0.85, 0.84, 0.88]
    rows = build_rows(["A", "B"], [[mk(v) for v in a], [mk(v) for v in b]])
    rb = next(r for r in rows if r["arm"] == "B")
    ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval()
    assert rb["n"] == 3 and (rb["diff_low"], rb["diff_high"]) == pytest.approx((ci.low, ci.high))
    assert rb["diff_kind"] == "Welch, n=3 vs 3"


def test_rows_pair_by_training_seed_exactly_like_scipy():
    mk = lambda v: {
        "knn": {"top1_k20": v},
        "linear": {
            "top1": v,
            "converged": True,  # noqa: E731
            "selected_at_grid_edge": v > 0.86,
        },
    }
    # hand-listed accuracies of two arms x 3 training seeds; arm B's checkpoints come in seed order 2, 0, 1
    a, a_seeds = [0.801, 0.824, 0.812], [0, 1, 2]
    b, b_seeds = [0.861, 0.833, 0.842], [2, 0, 1]
    names = ["A", "B", "start"]
    results = [[mk(v) for v in a], [mk(v) for v in b], [mk(0.79)]]
    comp = ComparisonResult(
        names,
        [["a"]] * 3,
        "digits",
        ["knn", "linear"],
        [0],
        results,
        build_rows(names, results, [a_seeds, b_seeds, [None]]),
        [a_seeds, b_seeds, [None]],
    )
    rb = comp.row("B", "knn/top1_k20")
    ci = stats.ttest_rel([0.833, 0.842, 0.861], [0.801, 0.824, 0.812]).confidence_interval(0.95)  # seeds 0, 1, 2
    assert (rb["diff_low"], rb["diff_high"]) == (float(ci.low), float(ci.high))  # exactly
    assert rb["diff"] == pytest.approx((0.833 + 0.842 + 0.861 - 0.801 - 0.824 - 0.812) / 3)
    assert rb["diff_kind"] == "paired, n=3"
    rs = comp.row("start", "knn/top1_k20")
    assert rs["diff_low"] is None and rs["diff_kind"] == "n=1: no interval"
    md = comp.to_markdown()
    low, high = f"{100 * ci.low:+.2f}", f"{100 * ci.high:+.2f}"
    assert f"[{low}, {high}] (paired, n=3)" in md and "(n=1, no interval)" in md
    assert "| linear/converged | 3/3 yes | 3/3 yes | yes |" in md
    assert "| linear/selected_at_grid_edge | 0/3 yes | 1/3 yes | no |" in md
    # different training seeds: Welch, labelled as such
    rows = build_rows(["A", "B"], results[:2], [a_seeds, [0, 1, 5]])
    rw = next(r for r in rows if r["arm"] == "B" and r["metric"] == "knn/top1_k20")
    ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert (rw["diff_low"], rw["diff_high"]) == (float(ci.low), float(ci.high)) and rw["diff_kind"] == "Welch, n=3 vs 3"
    back = ComparisonResult.from_json(comp.to_json())
    assert back.train_seeds == [a_seeds, b_seeds, [None]] and back.to_markdown() == md


def test_parse_arm_and_metric_values(tmp_path):
    assert parse_arm("e2mc=a.pt,b.pt") == ("e2mc", ["a.pt", "b.pt"])
    assert parse_arm("x.pt") == (None, ["x.pt"])
    vals = metric_values(
        {
            "meta": {},
            "fewshot": {
                "top1_1shot": 0.5,
                "per_seed": {"top1_1shot": [0.4, 0.6]},
                "top1_1shot_ci95": [0.1, 0.9],
                "weight_decay": 0.01,
            },
        }
    )
    assert vals == {"fewshot/top1_1shot": [0.4, 0.6]}
    with pytest.raises(DataError, match="no checkpoint"):
        compare([str(tmp_path / "missing.pt")], dataset="digits")


def _seeded_checkpoint(path, init_seed, train_seed):
    from e2mc.models.checkpoints import load_model

    torch.manual_seed(init_seed)
    m, _ = load_model("random:resnet_mini:8-16-32", method="vicreg", head_sizes={"projector": (32, 32)})
    torch.save(
        {
            "format": "e2mc",
            "method": "vicreg",
            "arch": "resnet_mini:8-16-32",
            "cifar_stem": True,
            "head_sizes": {"projector": [32, 32]},
            "model": m.state_dict(),
            "epoch": 1,
            "step": 1,
            "config": {"train": {"seed": train_seed}},
        },
        path,
    )
    return str(path)


def test_cli_compare_pairs_by_training_seed(tmp_path, capsys, monkeypatch):
    from e2mc.cli import main

    monkeypatch.setenv("E2MC_CACHE", str(tmp_path))
    # arm "a": training seeds 0, 1; arm "b": the same seeds, listed in the other order
    a = [_seeded_checkpoint(tmp_path / f"a{s}.pt", 10 + s, s) for s in (0, 1)]
    b = [_seeded_checkpoint(tmp_path / f"b{s}.pt", 20 + s, s) for s in (1, 0)]
    assert (
        main(
            [
                "compare",
                "a=" + ",".join(a),
                "b=" + ",".join(b),
                "--dataset",
                "digits",
                "--protocols",
                "knn",
                "--seeds",
                "0",
                "--json",
            ]
        )
        == 0
    )
    comp = ComparisonResult.from_json(capsys.readouterr().out)
    assert comp.train_seeds == [[0, 1], [1, 0]]
    ra, rb = comp.row("a", "knn/top1_k20"), comp.row("b", "knn/top1_k20")
    # scipy on the per-checkpoint accuracies, re-ordered by training seed here
    by_seed = dict(zip(rb["train_seeds"], rb["values"]))
    ci = stats.ttest_rel([by_seed[0], by_seed[1]], ra["values"]).confidence_interval(0.95)
    assert (rb["diff_low"], rb["diff_high"]) == (float(ci.low), float(ci.high))
    assert rb["diff_kind"] == "paired, n=2"
    assert f"[{100 * ci.low:+.2f}, {100 * ci.high:+.2f}] (paired, n=2)" in comp.to_markdown()


def test_compare_records_absolute_paths_and_warns_of_a_repeated_training_seed(tmp_path, monkeypatch):
    """`e2mc report` read from another directory lost the runs of a comparison.json that held the
    relative paths `compare` was given; an arm of two checkpoints of one training seed was counted as
    n=2 without a word (a new user's trial)."""
    monkeypatch.setenv("E2MC_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    a = [_seeded_checkpoint(tmp_path / f"a{i}.pt", 10 + i, 0) for i in (0, 1)]  # both training seed 0
    b = _seeded_checkpoint(tmp_path / "b.pt", 20, 0)
    with pytest.warns(UserWarning, match="arm 'a' holds several checkpoints of training seed 0"):
        comp = compare(["a=a0.pt,a1.pt", "b=b.pt"], dataset="digits", protocols=["rankme"])
    assert comp.checkpoints == [[a[0], a[1]], [b]]  # absolute, as the files' own paths
