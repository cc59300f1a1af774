import base64
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from e2mc.evaluation.compare import ComparisonResult, build_rows
from e2mc.report import write_report


def _comparison():
    rng = np.random.default_rng(0)

    def result(shift):
        u = rng.random((200, 4)) ** (1 + shift)
        return {
            "knn": {"top1_k20": 0.7 + shift},
            "fewshot": {
                "top1_5shot": 0.6 + shift,
                "per_seed": {"top1_5shot": [0.58 + shift, 0.6 + shift, 0.63 + shift]},
            },
            "rankme": {"backbone": 30.0 + 10 * shift},
            "spectrum": {"backbone": sorted((rng.random(64) ** (4 - 2 * shift)).tolist(), reverse=True)},
            "entropy": {"entropy": -0.3 + shift, "marginals_sample": u.T.tolist()},
        }

    results = [[result(0.0)], [result(0.05)]]
    names = ["vicreg", "vicreg+e2mc"]
    return ComparisonResult(
        names,
        [["a.pt"], ["b.pt"]],
        "digits",
        ["knn", "fewshot", "rankme", "spectrum", "entropy"],
        [0, 1, 2],
        results,
        build_rows(names, results),
    )


def _run(tmp_path, name, scale):
    d = tmp_path / name
    d.mkdir()
    cols = [
        "wall_time",
        "epoch",
        "step",
        "phase",
        "loss",
        "vicreg",
        "e2mc_entropy",
        "lr",
        "img_per_s",
        "rankme",
        "entropy",
        "uniformity",
    ]
    with open(d / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for s in range(10):
            w.writerow(
                [
                    s,
                    s // 5,
                    s * 10,
                    "train",
                    10 - s * scale,
                    8 - s * scale,
                    -0.5 + 0.04 * s,
                    0.1,
                    500,
                    "" if s % 5 else 20 + s,
                    "" if s % 5 else -0.4 + 0.02 * s,
                    "" if s % 5 else -3 + 0.1 * s,
                ]
            )
    return d


def test_report_renders(tmp_path):
    runs = [_run(tmp_path, "run_a", 0.5), _run(tmp_path, "run_b", 0.7)]
    paths = write_report(tmp_path / "out", _comparison(), runs=runs)
    for key in ("markdown", "html", "training", "accuracy", "spectrum", "marginals"):
        assert paths[key].exists() and paths[key].stat().st_size > 0
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") == 4 and "<table>" in html
    b64 = html.split("data:image/png;base64,")[1].split("'")[0]
    assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["markdown"].read_text()
    assert "| metric |" in md and "vicreg+e2mc" in md and "![" in md


def test_report_cli_from_json(tmp_path):
    comp = _comparison()
    comp.to_json(tmp_path / "comparison.json")
    run = _run(tmp_path, "run_a", 0.5)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "e2mc",
            "report",
            "--out",
            str(tmp_path / "rep"),
            str(tmp_path / "comparison.json"),
            str(run),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "rep" / "report.html").exists()
    bad = subprocess.run(
        [sys.executable, "-m", "e2mc", "report", "--out", str(tmp_path / "rep2"), str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "neither" in bad.stderr


def test_report_needs_input(tmp_path):
    from e2mc.errors import DataError

    with pytest.raises(DataError, match="nothing to report"):
        write_report(tmp_path / "out", None)
    assert not (tmp_path / "out" / "report.md").exists()


def test_report_table_states_intervals_and_spread(tmp_path):
    comp = _comparison()
    assert json.loads(json.dumps(comp.rows, allow_nan=False)) == comp.rows  # JSON-safe: no NaN, no tensors
    md = write_report(tmp_path, comp)["markdown"].read_text()
    # one checkpoint per arm: kNN has n=1 (no interval); few-shot is paired over evaluation seeds,
    # the per-seed differences are all +5 points: no spread, so no (zero-width) interval, and the table
    # says what that spread measures
    assert "| knn/top1_k20 (%) | 70.00 (1) | 75.00 (1) | +5.00 (n=1, no interval) |" in md
    assert (
        "| fewshot/top1_5shot (%) † | 60.33 ± 2.52 (3) | 65.33 ± 2.52 (3) | "
        "+5.00 (paired over evaluation seeds, n=3, the same difference with every seed; no interval) |"
    ) in md
    assert "evaluation noise, not training variance" in md


def test_report_opens_with_the_headline_and_lists_each_run(tmp_path):
    from e2mc.evaluation.compare import headline

    comp = _comparison()
    runs = []
    for name, seed in (("run_a", 0), ("run_b", 1)):
        d = _run(tmp_path, name, 0.5 + seed)
        (d / "config.yaml").write_text(f"mode: continue\ntrain:\n  seed: {seed}\n  epochs: 1\n")
        runs.append(d)
    paths = write_report(tmp_path / "out", comp, runs=runs, wall_times={"pretrain": 12.34, "total": 56.7})
    md = paths["markdown"].read_text()
    head = headline(comp)
    lines = [line for line in md.splitlines() if line.strip()]
    assert lines[1] == f"**{head['text']}**"  # right under the title: the comparison's verdict
    assert head["text"].startswith("Headline (knn/top1_k20, n=1: no interval): `vicreg+e2mc` − `vicreg` = +5.00 points")
    assert "Wall time: pretrain 12 s, total 57 s." in md and "## How to read this" in md
    # metrics.csv rows: steps 0..90, epochs 0..1, wall_time 0..9 s
    assert "| `run_a` | run_a | 0 | 1 | 90 | 9.0 |" in md and "| `run_b` | run_b | 1 | 1 | 90 | 9.0 |" in md
    assert "logged rows" not in md
    html = paths["html"].read_text()
    assert "id='headline'>Headline (knn/top1_k20" in html


def test_report_regenerates_the_compare_report_in_place(tmp_path, capsys):
    from e2mc.cli import main

    comp = _comparison()
    comp.to_json(tmp_path / "comparison.json")
    first = write_report(tmp_path, comp)["markdown"].read_text()  # what `compare --out` writes
    (tmp_path / "report.md").unlink()
    assert main(["report", str(tmp_path / "comparison.json")]) == 0  # no --out: next to the JSON
    assert (tmp_path / "report.md").read_text() == first
    assert main(["report", str(tmp_path / "run_missing")]) == 2
    assert "--out is needed" in capsys.readouterr().err


def test_comparison_json_carries_wall_times_and_verdict_into_the_report(tmp_path):
    comp = _comparison()
    comp.wall_time_s = {"evaluate": 3.21, "total": 12.5}
    comp.headline = {"text": "Headline (made by the demo): E2MC − base-only = +1.00 points"}
    comp.to_json(tmp_path / "comparison.json")
    again = ComparisonResult.from_json(str(tmp_path / "comparison.json"))
    md = write_report(tmp_path / "r", again)["markdown"].read_text()
    assert "**Headline (made by the demo): E2MC − base-only = +1.00 points**" in md
    assert "Wall time: evaluate 3.2 s, total 12 s." in md  # 3.21 -> 3.2; 12.5 -> 12 (round half to even)


def test_headline_with_the_same_difference_every_seed_gives_no_verdict():
    """Three training seeds, each +5 points on kNN@20: no spread, so no interval and no verdict, and
    the headline says why instead of asking for 'more seeds' as for n=1."""
    from e2mc.evaluation.compare import headline

    names = ["base", "arm"]
    results = [
        [{"knn": {"top1_k20": 0.70 + 0.01 * s}} for s in range(3)],
        [{"knn": {"top1_k20": 0.75 + 0.01 * s}} for s in range(3)],
    ]
    comp = ComparisonResult(
        names,
        [["a", "b", "c"], ["d", "e", "f"]],
        "digits",
        ["knn"],
        [0],
        results,
        build_rows(names, results, [[0, 1, 2], [0, 1, 2]]),
    )
    row = comp.row("arm", "knn/top1_k20")
    assert row["diff"] == pytest.approx(0.05) and row["diff_low"] is None
    head = headline(comp)
    assert "the same difference with every seed" in head["text"] and "run with more seeds" not in head["text"]
    assert "the same difference with every seed; no interval)" in comp.to_markdown()
