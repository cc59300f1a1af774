"""The demo end to end on a tiny budget: the structure of results.json, the honesty of the
verdict, the report files, and the cache of the pre-trained start."""

import contextlib
import io
import json

import pytest
from scipy import stats

from e2mc.cli import main
from e2mc.demo import BASE, E2MC_ARM, START


def _run(out, cache, workers):
    """Run the demo; returns what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(
            [
                "demo",
                "--out",
                str(out),
                "--cache-dir",
                str(cache),
                "--seeds",
                "0,1",
                "--workers",
                str(workers),
                "--pretrain-epochs",
                "1",
                "--continue-epochs",
                "1",
                "--set",
                "train.max_steps=3",
            ]
        )
    assert code == 0
    return printed.getvalue()


@pytest.fixture(scope="module")
def first_demo(tmp_path_factory):
    """The demo run once with an empty cache (the 4 continuations in 2 spawned processes):
    ``(out, cache, printed)``; each test that reads it gets it, run alone or with ``-k``."""
    root = tmp_path_factory.mktemp("demo")
    out, cache = root / "out", root / "cache"
    return out, cache, _run(out, cache, workers=2)


def test_demo_results_report_and_verdict(first_demo):
    out, cache, printed = first_demo
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == {BASE, E2MC_ARM, START}
    assert results["n_seeds"] == {BASE: 2, E2MC_ARM: 2, START: 1}
    for arm, metrics in results["arms"].items():
        for name in ("knn/top1_k20", "linear/top1", "rankme/backbone"):
            cell = metrics[name]
            assert set(cell) == {"mean", "std", "n"}
            assert cell["n"] == (1 if arm == START else 2)
    head = results["headline"]
    # The headline is E2MC minus base-only, paired by training seed: recomputed here with scipy
    # from the per-seed numbers results.json stores.
    assert head["base_seeds"] == head["e2mc_seeds"] == [0, 1] and head["kind"] == "paired, n=2"
    diffs = [e - b for b, e in zip(head["base"], head["e2mc"])]
    assert head["difference"] == pytest.approx(sum(diffs) / len(diffs))
    if max(diffs) - min(diffs) > 1e-9:
        ci = stats.ttest_rel(head["e2mc"], head["base"]).confidence_interval(0.95)
        assert (head["low"], head["high"]) == (float(ci.low), float(ci.high))
    else:  # no spread: the degenerate interval
        assert head["low"] == pytest.approx(head["difference"]) and head["high"] == pytest.approx(head["difference"])
    expected = "E2MC helps" if head["low"] > 0 else "E2MC hurts" if head["high"] < 0 else "no clear difference"
    assert head["verdict"].startswith(expected)
    assert f"[{100 * head['low']:+.2f}, {100 * head['high']:+.2f}]: {head['verdict']}" in printed
    # the table's cell for the same difference shows the same interval and test
    assert f"[{100 * head['low']:+.2f}, {100 * head['high']:+.2f}] (paired, n=2)" in printed
    for name in ("report.md", "report.html", "accuracy.png", "comparison.json"):
        assert (out / name).stat().st_size > 0
    assert "| metric |" in printed and "Headline" in printed
    # the same verdict on top of the report, with each stage's wall time (also in results.json)
    assert head["text"] in printed and f"**{head['text']}**" in (out / "report.md").read_text()
    assert head["text"].startswith("Headline (knn/top1_k20, paired, n=2): E2MC − base-only = ")
    wall = results["wall_time_s"]
    assert set(wall) == {"pretrain", "continue", "evaluate", "report", "total"} and not results["pretrain_cached"]
    assert wall["total"] >= wall["pretrain"] + wall["continue"] + wall["evaluate"] + wall["report"] - 0.5
    assert "Wall time: pretrain " in (out / "report.md").read_text()
    assert "(stage ETA " in printed  # the continue stage's progress lines after the first run
    assert "in 2 processes" in printed
    for run in ("vicreg-seed0", "vicreg_e2mc-seed1"):  # each parallel run's progress in its own log
        assert "[train] epoch 0 step 3/3" in (out / "runs" / run / "train.log").read_text()


def test_demo_reuses_cached_start_and_one_process_gives_the_same_numbers(first_demo, tmp_path):
    out, cache, _ = first_demo
    printed = _run(tmp_path / "again", cache, workers=1)
    assert "found in the cache" in printed
    # The continuations are seeded: one after another in this process (--workers 1) they give
    # exactly the numbers of the first test's 2 spawned processes.
    assert "in 2 processes" not in printed and "continuing (4/4)" in printed
    parallel = json.loads((out / "results.json").read_text())["arms"]
    assert json.loads((tmp_path / "again" / "results.json").read_text())["arms"] == parallel
    assert json.loads((tmp_path / "again" / "results.json").read_text())["pretrain_cached"] is True
    assert "Wall time: pretrain (cached) " in (tmp_path / "again" / "report.md").read_text()


def test_demo_refuses_non_empty_out(tmp_path, capsys):
    (tmp_path / "x").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "x").read_text() == "keep me"
