"""e2mc tune's pure parts: the search space, successive halving, selection rules, Kendall tau."""

import json

import pytest
from scipy.stats import kendalltau

from e2mc.errors import ConfigError, DataError
from e2mc.tuning import halving, scoring
from e2mc.tuning.space import parse_space


def test_default_space_and_log_grids(tmp_path):
    sp = parse_space(None).with_base_lr(0.3)  # the default LRs: the recipe's and 1/10, 1/sqrt(10) of it
    labels = [p.label for p in sp.points]
    assert sp.entropy_weight == [1.0, 10.0, 100.0] and sp.cov_weight == [1.0, 100.0, 10000.0]
    assert sp.lr == [0.03, 0.0948, 0.3] and not sp.epochs_given and sp.with_epochs(0.5).epochs == 0.5
    # none, vc, uniformity, mmcr + 3 x 3 E2MC, at each of 3 LRs
    assert len(labels) == 3 * (4 + 9) and len(set(labels)) == len(labels)
    assert labels[0] == "none-lr0.03" and "e2mc-ew10-cw100-lr0.3" in labels
    e2 = next(p for p in sp.points if p.label == "e2mc-ew100-cw1-lr0.3")
    assert e2.overrides == {
        "addon.name": "e2mc",
        "addon.entropy_weight": 100.0,
        "addon.cov_weight": 1.0,
        "optim.lr": 0.3,
    }
    assert parse_space({"lr": [None, 0.1]}).with_base_lr(0.3).lr == [None, 0.1]  # absolute LRs stay
    f = tmp_path / "space.yaml"
    f.write_text(
        "addons: [none, e2mc]\ne2mc: {entropy_weight: {log: [0.1, 1000, 5]}, cov_weight: [1, auto],"
        " transform: [gaussian_cdf]}\nlr: [0.05, 0.2]\nepochs: 1.5\nset: {optim.batch_size: 64}\n"
    )
    sp = parse_space(f)
    assert sp.entropy_weight == [0.1, 1.0, 10.0, 100.0, 1000.0] and sp.cov_weight == [1.0, "auto"]
    assert sp.epochs == 1.5 and sp.sets == {"optim.batch_size": 64}
    assert len(sp.points) == 2 * (1 + 5 * 2)
    auto = [p for p in sp.points if p.overrides.get("addon.cov_weight") == "auto"]
    assert (
        auto and auto[0].label.endswith("-cwauto-cdf-lr0.05") and auto[0].overrides["addon.transform"] == "gaussian_cdf"
    )


@pytest.mark.parametrize(
    "space, match",
    [
        ({"addon": ["none"]}, "unknown key"),
        ({"addons": ["none", "bogus"]}, "unknown add-on"),
        ({"e2mc": {"entropy_weight": [-1]}}, ">= 0"),
        ({"e2mc": {"cov_weight": {"log": [0, 10, 3]}}}, "lo, hi > 0"),
        ({"e2mc": {"transform": ["tanh"]}}, "unknown transform"),
        ({"lr": [0]}, "lr values"),
        ({"lr": {"relative": [0, 1]}}, "multiples of the recipe's LR"),
        ({"epochs": 0}, "epochs"),
        ({"set": {"optim.lr": 0.1}}, "may not fix"),
        ({"addons": ["none"], "lr": [None]}, "1 point"),
        ({"addons": ["e2mc"], "e2mc": {"entropy_weight": [10], "cov_weight": [1]}, "lr": [0.1]}, "nothing to choose"),
    ],
)
def test_bad_space_is_one_line_config_error(space, match):
    with pytest.raises(ConfigError, match=match) as e:
        parse_space(space)
    assert "\n" not in str(e.value)


def test_missing_space_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        parse_space(tmp_path / "nope.yaml")


def test_schedule_and_cost_by_hand():
    # 9 probes, longest 2 epochs, eta 3: s=2 rungs: 9 x 2/9, 3 x 2/3, 1 x 2
    rungs = halving.schedule(9, 2.0)
    assert [(r.probes, r.epochs) for r in rungs] == [(9, pytest.approx(2 / 9)), (3, pytest.approx(2 / 3)), (1, 2.0)]
    # cost with resume: 9 * 2/9 + 3 * (2/3 - 2/9) + 1 * (2 - 2/3) = 2 + 4/3 + 4/3
    assert halving.cost(rungs) == pytest.approx(2 + 4 / 3 + 4 / 3)
    assert halving.cost(halving.schedule(9, 2.0, "full")) == 18.0
    # budget 12 allows s=1 (9 x 2/3 + 3 x 4/3 = 10) but not s=0 (18): the fewest rungs that fit
    assert [(r.probes, r.epochs) for r in halving.schedule(9, 2.0, 12)] == [(9, pytest.approx(2 / 3)), (3, 2.0)]
    # 12 probes: rungs keep 12, 4, 1
    assert [r.probes for r in halving.schedule(12, 2.0)] == [12, 4, 1]
    assert halving.cost(halving.schedule(12, 2.0)) / 24 <= 1 / 3


def test_budget_too_small_for_one_schedule():
    with pytest.raises(ConfigError, match="too small") as e:
        halving.schedule(9, 2.0, budget=1.0)  # the cheapest costs 4.67
    assert "4.67" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="at least 2 probes"):
        halving.schedule(1, 2.0)


def test_advance_keeps_top_scores_nan_last_ties_by_order():
    scores = {"a": 0.5, "b": 0.9, "c": float("nan"), "d": 0.9, "e": None, "f": 0.1}
    assert halving.advance(scores, 3, order=list("abcdef")) == ["b", "d", "a"]
    assert halving.advance(scores, 6, order=list("dbacef"))[:2] == ["d", "b"]
    assert halving.advance(scores, 6)[-2:] == ["c", "e"]


def test_selection_rules_and_kendall_against_scipy():
    assert scoring.parse_select("heldout") == "heldout"
    assert scoring.parse_select("label-free:lidar") == "lidar"
    for bad in ("label-free:knn", "test", "label-free"):
        with pytest.raises(ConfigError, match="heldout or label-free"):
            scoring.parse_select(bad)
    m = {"knn_top1_k20": 0.7, "alpha_req": 1.3, "rankme": 5.0}
    assert scoring.score(m, "heldout") == 0.7 and scoring.score(m, "alpha_req") == pytest.approx(-0.3)
    assert scoring.score(m, "lidar") is None
    vals = {
        f"p{i}": {"knn_top1_k20": k, "rankme": r, "alpha_req": a, "entropy": e}
        for i, (k, r, a, e) in enumerate([(0.5, 3, 0.5, 1), (0.6, 2, 0.9, 2), (0.7, 5, 1.4, 3), (0.4, 1, 2.0, 0)])
    }
    tau = scoring.kendall(vals)
    knn = [v["knn_top1_k20"] for v in vals.values()]
    assert tau["rankme"]["tau"] == pytest.approx(kendalltau([v["rankme"] for v in vals.values()], knn).statistic)
    ref = kendalltau([-abs(v["alpha_req"] - 1) for v in vals.values()], knn)
    assert tau["alpha_req"]["tau"] == pytest.approx(ref.statistic) and tau["alpha_req"]["p"] == pytest.approx(
        ref.pvalue
    )
    assert tau["entropy"]["tau"] == pytest.approx(1.0) and tau["lidar"] == {
        "tau": None,
        "p": None,
        "n": 0,
        "too_few": True,
    }


def test_holdout_split_rules(tmp_path):
    targets = [0, 1] * 50
    with pytest.raises(DataError, match="too few for kNN@20"):
        scoring.holdout_split(tmp_path / "s.json", "x", targets, 10)
    with pytest.raises(DataError, match="fewer than k=20"):
        scoring.holdout_split(tmp_path / "s.json", "x", targets, 90)
    with pytest.raises(DataError, match="no labels"):
        scoring.holdout_split(tmp_path / "s.json", "x", [-1] * 100, 30)
    p = scoring.holdout_split(tmp_path / "s.json", "x", targets, 30, n_train=40)
    assert scoring.holdout_split(p, "x", targets, 30, n_train=40) == p  # the same request: kept
    with pytest.raises(ConfigError, match="another held-out split"):
        scoring.holdout_split(p, "x", targets, 31, n_train=40)
    obj = json.loads(p.read_text())
    held, train = obj["splits"]["test"], obj["splits"]["train"]
    assert obj["source_split"] == "train" and len(held) == 30 and len(train) == 40 and not set(held) & set(train)
    assert [sum(targets[i] == c for i in held) for c in (0, 1)] == [15, 15]  # stratified
    assert [sum(targets[i] == c for i in train) for c in (0, 1)] == [20, 20]


def test_tune_takes_a_spec_and_the_former_call_warns(tmp_path):
    """``tune(TuneSpec(...))``; the former keyword call still builds the same spec (and warns); a
    misspelt field is one line. Both stop at the first check (no output folder), before any work."""
    import e2mc
    from e2mc.errors import ConfigError

    with pytest.raises(ConfigError, match="tune needs an output folder"):
        e2mc.tune(e2mc.TuneSpec("random:resnet_mini", "digits"))
    with pytest.warns(DeprecationWarning, match="pass tune\\(TuneSpec"):
        with pytest.raises(ConfigError, match="tune needs an output folder"):
            e2mc.tune("random:resnet_mini", "digits", budget=1)
    with pytest.raises(ConfigError, match="unexpected keyword argument 'budgte'.*TuneSpec"):
        e2mc.tune("random:resnet_mini", "digits", budgte=1)
    with pytest.raises(ConfigError, match="takes the TuneSpec alone"):
        e2mc.tune(e2mc.TuneSpec("random:resnet_mini", "digits"), "digits")


def test_lengthen_first_drops_short_rungs_until_the_first_is_long_enough():
    rungs = halving.schedule(9, 2.0)  # 2/9, 2/3, 2 epochs
    assert halving.lengthen_first(rungs, 9, 0.2) == rungs
    longer = halving.lengthen_first(rungs, 9, 0.5)
    assert [(r.epochs, r.probes) for r in longer] == [(2 / 3, 9), (2.0, 3)]
    assert [r.epochs for r in halving.lengthen_first(rungs, 9, 5.0)] == [2.0]  # at most the full grid


def test_the_last_rung_matches_confirm_epochs_unless_the_space_sets_epochs(tmp_path):
    from e2mc.tuning.api import _check
    from e2mc.tuning.spec import TuneSpec

    ckpt = tmp_path / "start.pt"
    ckpt.write_bytes(b"")  # _check only needs the file to exist (nothing is loaded)
    kw = dict(out=tmp_path / "o", recipe="digits_vicreg_e2mc", method="vicreg", confirm_epochs=0.5)
    plan, _ = _check(TuneSpec(str(ckpt), "digits", space={"addons": ["none", "vc"]}, **kw))
    assert plan.space.epochs == 0.5 and plan.space.lr == [0.01, 0.0316, 0.1]  # the recipe's LR 0.1
    plan, _ = _check(TuneSpec(str(ckpt), "digits", space={"addons": ["none", "vc"], "epochs": 2}, **kw))
    assert plan.space.epochs == 2
