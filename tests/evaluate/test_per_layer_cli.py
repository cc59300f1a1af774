"""``--layers`` end to end on the tiny digits start: the per-layer tables of ``evaluate`` and
``compare`` (paired by seed per layer) and the report's per-layer curve."""

import json

from e2mc.evaluation.compare import ComparisonResult, build_rows, headline
from tests.conftest import tiny_digits_start


def _cli(capsys, *args):
    from e2mc.cli import main

    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_layers_table_and_curve(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("E2MC_CACHE", str(tmp_path / "cache"))
    ck = str(tiny_digits_start(tmp_path))
    common = ("--dataset", "digits", "--seeds", "0", "--device", "cpu", "--layers", "all")
    rc, out, err = _cli(capsys, "evaluate", ck, "--protocols", "knn,rankme", *common)
    assert rc == 0, err
    assert "[knn] per layer (%)" in out and "[rankme] per layer" in out
    assert "| layer | top1_k10 | top1_k20 | top1_k100 | top1_k200 |" in out
    assert len([line for line in out.splitlines() if line.startswith("| layer |")]) == 2  # one table each
    for name in ("layer1", "layer2", "layer3"):  # resnet_mini's three stages, a row each in both tables
        assert out.count(f"| {name} | ") == 2
    rc, out, err = _cli(capsys, "evaluate", ck, "--protocols", "knn", *common[:-1], "-1", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert list(res["knn"]["by_layer"]) == ["layer3"] and res["meta"]["layers"] == ["layer3"]
    cmp = tmp_path / "cmp"
    rc, out, err = _cli(
        capsys, "compare", f"start={ck}", f"again={ck}", "--protocols", "knn", *common, "--out", str(cmp)
    )
    assert rc == 0, err
    assert "**knn per layer** (%)" in out and "| layer3 | " in out
    assert (cmp / "layers.png").stat().st_size > 0 and "layers.png" in (cmp / "report.md").read_text()
    rc, out, err = _cli(capsys, "evaluate", ck, "--protocols", "knn", *common[:-1], "layer9")
    assert rc == 2 and "layer 'layer9' is not a layer of this resnet backbone" in err
    assert len(err.strip().splitlines()) == 1


def test_compare_pairs_by_training_seed_per_layer():
    def res(base):
        return {"knn": {"by_layer": {"layer1": {"top1_k20": base}, "layer2": {"top1_k20": base + 0.1}}}}

    results = [[res(0.50), res(0.52), res(0.54)], [res(0.60), res(0.61), res(0.65)]]
    rows = build_rows(["before", "after"], results, [[0, 1, 2], [0, 1, 2]])
    r = next(r for r in rows if r["arm"] == "after" and r["metric"] == "knn/top1_k20@layer2")
    assert r["n"] == 3 and abs(r["diff"] - 0.10) < 1e-9
    assert r["diff_kind"].startswith("paired")
    cr = ComparisonResult(["before", "after"], [["a"] * 3, ["b"] * 3], "digits", ["knn"], [0], results, rows)
    assert headline(cr)["metric"] == "knn/top1_k20@layer2"  # per layer: the deepest layer's kNN@20
    small = [[{"knn": {"by_layer": {la: {"top1_k3": r["knn"]["by_layer"][la]["top1_k20"]} for la in ("layer1", "layer2")}}}
              for r in arm] for arm in results]  # fmt: skip
    cr3 = ComparisonResult(
        ["before", "after"], [["a"] * 3, ["b"] * 3], "digits", ["knn"], [0], small,
        build_rows(["before", "after"], small, [[0, 1, 2], [0, 1, 2]]),
    )  # fmt: skip
    assert headline(cr3)["metric"] == "knn/top1_k3@layer2"  # k clipped on a small set: still the deepest layer's
    md = cr.to_markdown()
    assert "**knn per layer** (%)" in md and md.count("| layer1 |") == 1 and md.count("| layer2 |") == 1
    from e2mc.report.plots import layer_curves

    c = layer_curves(cr.names, rows)["knn"]
    assert (
        c["layers"] == ["layer1", "layer2"] and abs(c["series"]["after"][1][0] - 100 * (0.70 + 0.71 + 0.75) / 3) < 1e-9
    )
