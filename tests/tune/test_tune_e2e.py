"""e2mc tune end to end on the embedded digits (tiny start, 3 probes of 1-4 steps)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from scipy import stats

import e2mc
from e2mc.cli import main
from e2mc.errors import ConfigError, DataError
from e2mc.tuning import probes as probes_mod
from e2mc.tuning.api import to_markdown, write_outputs
from e2mc.tuning.paired import paired_interval
from tests.conftest import tiny_digits_start

SPACE = {
    "addons": ["none", "e2mc"],
    "e2mc": {"entropy_weight": [10], "cov_weight": [1, 1000]},
    "lr": [None],
    "epochs": 1,
    "set": {"optim.batch_size": 64, "train.probe_size": 0, "train.log_every": 1000},
}
LABEL_FREE = ("rankme", "entropy", "lidar", "alpha_req")
KW = dict(recipe="digits_vicreg_e2mc", holdout=120, train_images=192, workers=1, log=lambda *a: None)


def run_tune(checkpoint, dataset, log=print, **fields):
    """``e2mc.tune`` of a :class:`e2mc.TuneSpec` with these fields."""
    return e2mc.tune(e2mc.TuneSpec(checkpoint, dataset, **fields), log=log)


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    ckpt = tiny_digits_start(root)
    return root, ckpt


@pytest.fixture(scope="module")
def tuned(start, monkeypatch_module):
    """One tune (held-out selection, all label-free metrics), recording every dataset it builds."""
    import e2mc.data.datasets as ds

    root, ckpt = start
    built = []
    real = ds.build_dataset

    def spy(spec, split="train", *a, **k):
        built.append((str(spec), split))
        return real(spec, split, *a, **k)

    monkeypatch_module.setattr(ds, "build_dataset", spy)
    res = run_tune(str(ckpt), "digits", out=root / "out", space=SPACE, label_free=LABEL_FREE, **KW)
    monkeypatch_module.setattr(ds, "build_dataset", real)
    return root, ckpt, res, built


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_tune_outputs_ranked_table_and_schedule(tuned):
    root, _, res, _ = tuned
    out = root / "out"
    assert json.loads((out / "tune.json").read_text())["chosen"]["label"] == res["chosen"]["label"]
    # 3 probes, eta 3: rung 0 = 3 probes at 1/3 epoch (192 // 64 = 3 batches -> 1 step), rung 1 = 1 probe to 3 steps
    assert [(s["probes"], s["steps"]) for s in res["schedule"]] == [(3, 1), (1, 3)]
    r0, last = res["rungs"][0], res["rungs"][-1]
    # base-only always advances (the control); so does every probe whose paired interval reaches the leader's
    assert "none" in last["probes"] and res["reference"] == "none"
    for lab in r0["probes"]:
        iv = r0["paired"][lab]["vs_leader"]
        assert (lab in last["probes"]) == (lab in ("none", r0["leader"]) or iv["low"] <= 0 <= iv["high"])
    addon = {p["label"]: p["addon"] for p in res["probes"]}
    above = [lab for lab in last["probes"] if addon[lab] != "none" and last["paired"][lab]["vs_base"]["low"] > 0]
    want = max(above, key=lambda lab: last["scores"][lab]) if above else "none"
    assert res["chosen"]["label"] == want and res["distinguishable"] == bool(above)
    for p in res["probes"]:  # the score is held-out kNN@20 at the probe's last rung
        assert p["score"] == p["metrics"]["knn_top1_k20"]
        assert set(p["metrics"]) == {"knn_top1_k20", "linear_top1", "rankme", "entropy", "lidar", "alpha_req"}
    steps = {p["label"]: p["steps"] for p in res["probes"]}
    assert res["cost"]["trained_epochs"] == pytest.approx(sum(steps.values()) / 3)
    assert res["cost"]["full_grid_epochs"] == 3.0
    best = last["leader"]
    md = (out / "tune.md").read_text()
    assert "**Chosen: `" in md and "| rank | probe |" in md and "Kendall tau" in md
    ch = res["chosen"]["label"]  # the headline's rank is the chosen probe's row (base-only kept: not 1)
    row_rank = next(p["rank"] for p in res["probes"] if p["label"] == ch)
    assert f"**Chosen: `{ch}`** (rank {row_rank} of {len(res['probes'])} by the selection score" in md
    assert f"| {row_rank} | {ch} |" in md
    assert "minus base-only [95%]" in md and "minimum detectable paired kNN@20 difference" in md
    assert "too few probes" in md  # 3 probes: no ranking can reach p < 0.05
    fs = res["final_seeds"]  # the last rung's leaders and base-only again with training seed 1
    assert fs["seeds"] == [0, 1] and "none" in fs["probes"] and "Training seeds at the last rung" in md
    assert set(fs["per_seed"]["1"]["probes"]) == set(fs["probes"])
    assert all((out / "probes" / f"{lab}-seed1" / "checkpoints" / "last.pt").is_file() for lab in fs["probes"])
    page = (out / "tune.html").read_text()
    assert "<table>" in page and "`" not in page and "class='headline'" in page and "data:image/png" in page
    assert (out / "probes" / best / "checkpoints" / "last.pt").is_file()
    step = torch.load(out / "probes" / best / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert step == 3  # resumed from rung 0's checkpoint up to rung 1, one run


def test_paired_outcomes_match_the_knn_accuracy_and_the_intervals(tuned):
    """Per-image outcomes reproduce kNN@20; each rung's intervals are those of the stored outcomes."""
    root, _, res, _ = tuned
    for lab in ("none", "e2mc-ew10-cw1"):
        rec = json.loads((root / "out" / "probes" / lab / "probe.json").read_text())
        for st, o in rec["outcomes"].items():
            assert len(o) == 120 and sum(map(int, o)) / 120 == pytest.approx(rec["scores"][st]["knn_top1_k20"])
    r0 = res["rungs"][0]
    recs = {lab: json.loads((root / "out" / "probes" / lab / "probe.json").read_text()) for lab in r0["probes"]}
    a, b = (recs[lab]["outcomes"]["1"] for lab in ("e2mc-ew10-cw1", "none"))
    d = [int(x) - int(y) for x, y in zip(a, b)]
    mean = sum(d) / len(d)
    half = 1.959963984540054 * (sum(x * x for x in d) / len(d) - mean**2) ** 0.5 / len(d) ** 0.5
    iv = r0["paired"]["e2mc-ew10-cw1"]["vs_base"]
    assert iv["diff"] == pytest.approx(mean) and iv["high"] - iv["low"] == pytest.approx(2 * half)
    pw = res["power"]  # the pilot: two base-only probes on the capped held-out part (20% of 1347)
    pilot = [json.loads((root / "out" / "pilot" / f"seed{s}" / "probe.json").read_text()) for s in (0, 1)]
    o0, o1 = (p["outcomes"][str(pw["pilot_steps"])] for p in pilot)
    assert pw["pilot_images"] == len(o0) == 269 and pw["held_out"] == 120  # --holdout given: kept
    assert pw["discordance"] == pytest.approx(sum(x != y for x, y in zip(o0, o1)) / 269)
    c = 1.959963984540054 + 0.8416212335729143
    start_o = json.loads((root / "out" / "pilot" / "start.json").read_text())["outcomes"]
    assert pw["discordance_vs_start"] == pytest.approx(sum(x != y for x, y in zip(o0, start_o)) / 269)
    p = max(pw["discordance"], pw["discordance_vs_start"], 1 / 269)
    assert pw["discordance_used"] == p and pw["mde"] == pytest.approx(c * (p / (120 + c * c)) ** 0.5)
    assert pw["realised"]["probes"] == len(res["rungs"][-1]["probes"]) - 1  # every probe but base-only
    # the first rung: base-only's RankMe moved by min_move at the pilot's steps, or the last rung was reached
    start = json.loads((root / "out" / "pilot" / "start.json").read_text())["rankme"]
    moved = pilot[0]["scores"][str(pw["pilot_steps"])]["rankme"]
    assert pw["moved"][-1] == {"steps": pw["pilot_steps"], "rankme_change": pytest.approx(abs(moved - start) / start)}
    assert pw["moved"][-1]["rankme_change"] >= 0.05 or res["rungs"][0]["epochs"] == 1


def test_linear_outcomes_give_linear_top1_and_the_rung_intervals(tuned):
    """Each probe's per-image linear outcomes reproduce its linear probe's accuracy; tune.json's linear
    interval to base-only is paired_interval of the stored strings, and tune.md shows it by each rung's kNN."""
    root, _, res, _ = tuned
    out = root / "out"
    saved = json.loads((out / "tune.json").read_text())
    md = (out / "tune.md").read_text()
    assert "linear minus base-only [95%]" in md and "selected by kNN@20 (primary)" in md
    for r in saved["rungs"]:
        recs = {lab: json.loads((out / "probes" / lab / "probe.json").read_text()) for lab in r["probes"]}
        lin = {lab: rec["linear_outcomes"][str(r["steps"])] for lab, rec in recs.items()}
        for lab, o in lin.items():
            acc = recs[lab]["scores"][str(r["steps"])]["linear_top1"]
            assert len(o) == 120 and sum(map(int, o)) / 120 == pytest.approx(acc, abs=1e-6)
        for lab in r["probes"]:
            iv = r["paired"][lab]["linear_vs_base"]
            if lab == saved["reference"]:
                assert iv is None
                continue
            assert iv == paired_interval(lin[lab], lin[saved["reference"]])
            d = [int(x) - int(y) for x, y in zip(lin[lab], lin[saved["reference"]])]
            assert iv["diff"] == pytest.approx(sum(d) / 120)
            cell = f"{100 * iv['diff']:+.2f} [{100 * iv['low']:+.2f}, {100 * iv['high']:+.2f}]"
            assert any(line.startswith(f"| {lab} |") and cell in line for line in md.splitlines())
    for entry in saved["final_seeds"]["per_seed"].values():  # the extra seeds' probes carry them too
        assert all("linear_vs_base" in pr for pr in entry["paired"].values())


def test_an_old_tune_json_without_linear_outcomes_renders(tuned, tmp_path):
    """tune.json of an older e2mc (no linear_vs_base; at worst no linear_top1 either): "-" in its cells."""
    root, _, _, _ = tuned
    old = json.loads((root / "out" / "tune.json").read_text())
    for r in old["rungs"] + list(old["final_seeds"]["per_seed"].values()):
        for pr in r["paired"].values():
            pr.pop("linear_vs_base")
    write_outputs(tmp_path, old)
    md = (tmp_path / "tune.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| e2mc-") and line.count("|") == 9]
    assert rows and all(line.endswith("| - | - |") for line in rows)
    assert "<table>" in (tmp_path / "tune.html").read_text()
    for p in old["probes"]:
        for m in p["metrics_by_steps"].values():
            m.pop("linear_top1")
    rows = [line for line in to_markdown(old).splitlines() if line.startswith("| e2mc-") and line.count("|") == 9]
    assert rows and all(line.endswith("| - | - | - |") for line in rows)


def test_kendall_tau_matches_scipy(tuned):
    _, _, res, _ = tuned
    rung0 = {p["label"]: p["metrics_by_steps"]["1"] for p in res["probes"]}
    knn = [m["knn_top1_k20"] for m in rung0.values()]
    for metric in ("rankme", "entropy", "lidar"):
        ref = stats.kendalltau([m[metric] for m in rung0.values()], knn).statistic
        got = res["kendall_tau"][metric]["tau"]
        assert (got is None and ref != ref) or got == pytest.approx(ref)
    ref = stats.kendalltau([-abs(m["alpha_req"] - 1) for m in rung0.values()], knn).statistic
    assert res["kendall_tau"]["alpha_req"]["tau"] == pytest.approx(ref) or ref != ref


def test_tuning_never_reads_the_test_split(tuned):
    root, _, res, built = tuned
    split = json.loads((root / "out" / "split.json").read_text())
    assert split["source_split"] == "train" and split["dataset"] == "digits"
    assert not set(split["splits"]["train"]) & set(split["splits"]["test"])
    n_train = len(e2mc.build_dataset("digits", "train"))
    assert max(split["splits"]["train"] + split["splits"]["test"]) < n_train
    assert len(split["splits"]["test"]) == 120 and len(split["splits"]["train"]) == 192
    assert built and all(spec.endswith("split.json") or split_name == "train" for spec, split_name in built)
    assert ("digits", "test") not in built


def test_rerun_skips_done_probes_and_confirm_gives_paired_intervals(tuned, monkeypatch):
    root, ckpt, first, _ = tuned
    trained = []
    real = probes_mod._train
    monkeypatch.setattr(probes_mod, "_train", lambda src, over, d: (trained.append(d.name), real(src, over, d))[1])
    res = run_tune(
        str(ckpt), "digits", out=root / "out", space=SPACE, confirm=2, confirm_epochs=0.1, label_free=LABEL_FREE, **KW
    )
    assert all(name.startswith(("base-only-seed", res["confirm"]["arm"] + "-seed")) for name in trained)
    assert sorted(trained) == sorted(
        [f"base-only-seed{s}" for s in (0, 1)] + [f"{res['confirm']['arm']}-seed{s}" for s in (0, 1)]
    )
    assert [p["metrics"] for p in res["probes"]] == [p["metrics"] for p in first["probes"]]
    cf = res["confirm"]
    assert cf["seeds"] == 2 and cf["steps"] == 2  # 0.1 epoch of 1347 // 64 = 21 batches
    row = next(r for r in cf["rows"] if r["metric"] == "knn/top1_k20" and r["arm"] == cf["arm"])
    base = next(
        r
        for r in json.loads((root / "out" / "confirm" / "comparison.json").read_text())["rows"]
        if r["arm"] == "base-only" and r["metric"] == "knn/top1_k20"
    )
    d = [a - b for a, b in zip(row["values"], base["values"])]  # seeds 0, 1 in both arms: paired
    t = stats.t.ppf(0.975, 1) * stats.tstd(d) / 2**0.5
    assert row["diff"] == pytest.approx(sum(d) / 2) and row["diff_kind"].startswith("paired")
    if t > 0:
        assert row["diff_low"] == pytest.approx(sum(d) / 2 - t) and row["diff_high"] == pytest.approx(sum(d) / 2 + t)
    assert "Confirmation on the test split" in (root / "out" / "tune.md").read_text()


def test_interrupted_tune_resumes_and_skips_finished_probes(start, monkeypatch):
    root, ckpt = start
    out = root / "interrupted"
    space = {**SPACE, "e2mc": {"entropy_weight": [10], "cov_weight": [1, 100]}}
    calls = []
    stop = [True]
    real = probes_mod._train

    def flaky(src, over, d):
        calls.append((d.name, over["train.max_steps"]))
        if len(calls) == 2 and stop[0]:
            stop[0] = False
            raise KeyboardInterrupt  # stopped during the second probe
        return real(src, over, d)

    monkeypatch.setattr(probes_mod, "_train", flaky)
    kw = {**KW, "label_free": (), "select": "label-free:rankme", "eval_precision": "bf16"}
    with pytest.raises(KeyboardInterrupt):
        run_tune(str(ckpt), "digits", out=out, space=space, **kw)
    first = calls[0]
    calls.clear()
    res = run_tune(str(ckpt), "digits", out=out, space=space, **kw)
    assert first not in calls and len([c for c in calls if c[1] == 1]) == 2  # the finished probe is skipped
    seconds = {p["label"]: p["train_seconds"] for p in res["probes"]}
    monkeypatch.setattr(probes_mod, "_train", real)
    again = run_tune(str(ckpt), "digits", out=out, space=space, **{**kw, "workers": 2})  # parallel path: all done
    assert {p["label"]: p["train_seconds"] for p in again["probes"]} == seconds
    assert again["chosen"]["label"] == res["chosen"]["label"]
    r0 = res["rungs"][0]["scores"]  # chosen by RankMe (backbone), not by kNN
    assert r0 == {p["label"]: p["metrics_by_steps"]["1"]["rankme"] for p in res["probes"]}
    assert res["chosen"]["label"] == max(r0, key=lambda lab: (r0[lab], -list(r0).index(lab)))
    with pytest.raises(ConfigError, match="other evaluation settings"):  # scores are never mixed across settings
        run_tune(str(ckpt), "digits", out=out, space=space, **{**kw, "eval_precision": "fp32"})


def test_bad_inputs_are_one_line_errors(start, tmp_path, capsys):
    root, ckpt = start
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(30):  # images without class folders: no labels
        Image.fromarray((torch.rand(8, 8, 3) * 255).byte().numpy()).save(flat / f"{i}.png")
    with pytest.raises(DataError, match="no labels and no label-free metric") as e:
        run_tune(str(ckpt), str(flat), out=tmp_path / "a", space=SPACE, **{**KW, "holdout": 10})
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="too few for kNN@20"):
        run_tune(str(ckpt), "digits", out=tmp_path / "b", space=SPACE, **{**KW, "holdout": 5})
    with pytest.raises(ConfigError, match="nothing to choose"):
        run_tune(str(ckpt), "digits", out=tmp_path / "c", space={"addons": ["none"], "lr": [None]}, **KW)
    with pytest.raises(ConfigError, match="too small"):
        run_tune(str(ckpt), "digits", out=tmp_path / "d", space=SPACE, budget=0.1, **KW)
    for bad in (float("nan"), -1.0, 0.0):  # refused before any probe trains, nothing written
        with pytest.raises(ConfigError, match="--confirm-epochs must be a positive number"):
            run_tune(str(ckpt), "digits", out=tmp_path / "g", space=SPACE, confirm=3, confirm_epochs=bad, **KW)
    with pytest.raises(ConfigError, match="--target-diff is in kNN points"):
        run_tune(str(ckpt), "digits", out=tmp_path / "g", space=SPACE, target_diff=0, **KW)
    with pytest.raises(ConfigError, match="--holdout-cap is a fraction"):
        run_tune(str(ckpt), "digits", out=tmp_path / "g", space=SPACE, holdout_cap=1.5, **KW)
    with pytest.raises(ConfigError, match="--min-move is a relative RankMe change"):
        run_tune(str(ckpt), "digits", out=tmp_path / "g", space=SPACE, min_move=-1, **KW)
    with pytest.raises(ConfigError, match="--confirm takes N >= 1"):
        run_tune(str(ckpt), "digits", out=tmp_path / "g", space=SPACE, confirm=-1, **KW)
    assert not (tmp_path / "g").exists()
    with pytest.raises(ConfigError, match="label-free:<metric>"):
        run_tune(str(ckpt), "digits", out=tmp_path / "f", space=SPACE, select="label-free:knn", **KW)
    code = main(
        [
            "tune",
            str(ckpt),
            "--dataset",
            "digits",
            "--out",
            str(tmp_path / "e"),
            "--budget",
            "0.1",
            "--recipe",
            "digits_vicreg_e2mc",
            "--holdout",
            "120",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "too small" in err and "Traceback" not in err


def test_cli_help_has_description_and_example(capsys):
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    text = capsys.readouterr().out
    assert (
        "successive halving" in text
        and "examples:" in text
        and "space.yaml" in text
        and "e2mc tune " in text
        and "--confirm" in text
    )


def test_a_second_tune_on_the_same_folder_is_refused(start, tmp_path):
    """Two processes tuning into one folder would train the same probes twice and race on tune.json:
    the folder is locked for the tune's life (here held by another open lock, as a second process would)."""
    from e2mc.errors import RunLocked
    from e2mc.train.run import RunLock

    _, ckpt = start
    held = RunLock.acquire(tmp_path / "busy")
    try:
        with pytest.raises(RunLocked, match="in use by another e2mc run"):
            run_tune(str(ckpt), "digits", out=tmp_path / "busy", space=SPACE, **KW)
    finally:
        held.release()
    assert not (tmp_path / "busy" / "split.json").exists()  # refused before writing anything
