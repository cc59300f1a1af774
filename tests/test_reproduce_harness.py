"""The CIFAR reproduction harness (benchmarks/reproduce), run end to end on the embedded digits.

A 3-step pre-training is the "start"; it is exported to fp16 safetensors, continued in two arms
x two seeds (2 steps each), evaluated and tabulated; a second invocation must skip every arm.
Also: split files (the held-out part of a training split), --select mode, the curve script.
"""

from __future__ import annotations

import json
import math
import shutil
import time

import pytest
import torch
from scipy import stats

import e2mc
from benchmarks.reproduce import arms, curve, restat
from benchmarks.reproduce.export_start import export_start
from e2mc.data.datasets import build_dataset
from e2mc.data.splits import stratified_holdout, write_split_file
from e2mc.errors import ConfigError, DataError
from e2mc.evaluation.features import file_sha256

TINY = [
    "--recipe",
    "digits_vicreg_e2mc",
    "--batch-size",
    "128",
    "--lr",
    "0.1",
    "--epochs",
    "1",
    "--set",
    "train.probe_size=0",
    "--set",
    "train.log_every=1000",
    "--protocols",
    "knn,linear,rankme",
]


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("repro")
    run = e2mc.pretrain(
        "digits_vicreg_pretrain",
        train__max_steps=3,
        train__epochs=1,
        train__device="cpu",
        train__probe_size=0,
        out__dir=str(root / "pretrain"),
    )
    info = export_start(run / "checkpoints" / "last.pt", root / "starts" / "digits", log=lambda *_: None)
    return root, info


def test_stratified_holdout_matches_class_shares():
    targets = [0] * 50 + [1] * 30 + [2] * 20
    keep, held = stratified_holdout(targets, 10, seed=3)
    assert len(held) == 10 and sorted(keep + held) == list(range(100))
    assert [sum(targets[i] == c for i in held) for c in range(3)] == [5, 3, 2]  # 10 * share, exact
    assert stratified_holdout(targets, 10, seed=3) == (keep, held)
    assert stratified_holdout(targets, 10, seed=4)[1] != held
    with pytest.raises(DataError):
        stratified_holdout(targets, 100)


def test_split_file_is_a_dataset_spec(tmp_path):
    base = build_dataset("digits", "train")
    path = write_split_file(tmp_path / "split.json", "digits", base.targets, 200, seed=0)
    tr, te = build_dataset(str(path), "train"), build_dataset(str(path), "test")
    held = json.loads(path.read_text())["splits"]["test"]
    assert len(te) == 200 and len(tr) == len(base) - 200
    assert torch.equal(te.images, base.images[held]) and te.targets == [base.targets[i] for i in held]
    assert te.info.mean == base.info.mean and te.info.name != tr.info.name != base.info.name
    with pytest.raises(DataError, match="splits"):
        build_dataset(str(path), "val")
    bad = json.loads(path.read_text())
    bad["n_source"] = 5
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="write a new split file"):
        build_dataset(str(tmp_path / "bad.json"), "train")


def test_export_start_is_small_fp16_and_loadable(start):
    root, info = start
    path = root / "starts" / "digits" / "model.safetensors"
    meta = json.loads((root / "starts" / "digits" / "start.json").read_text())
    assert meta["sha256"] == file_sha256(path)
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float16}
    assert any(k.startswith("projector.") for k in tensors) and meta["heads"] == ["projector"]
    raw = torch.load(root / "pretrain" / "checkpoints" / "last.pt", weights_only=True)["model"]
    k = next(k for k in raw if k.endswith("conv1.weight"))
    assert torch.equal(tensors[k], raw[k].half())
    assert meta["source_epoch"] == 0 and meta["seed"] == 0 and meta["size_bytes"] == path.stat().st_size


def test_arms_end_to_end_resumable(start):
    root, _ = start
    out = root / "arms"
    argv = [
        "--start",
        str(root / "starts" / "digits"),
        "--out",
        str(out),
        "--arms",
        "base,e2mc",
        "--seeds",
        "0,1",
        "--set",
        "train.max_steps=2",
        *TINY,
    ]
    res = arms.main(argv, log=lambda *_: None)
    assert set(res["arms"]) == {"start", "base", "e2mc"}
    for metric in ("knn/top1_k20", "knn/top1_k200", "linear/top1", "rankme/backbone", "rankme/projector"):
        row = res["arms"]["e2mc"][metric]
        base = res["arms"]["base"][metric]
        assert row["n"] == 2 and row["seeds"] == [0, 1] and res["arms"]["start"][metric]["n"] == 1
        d = [b - a for a, b in zip(base["values"], row["values"])]  # independent paired t-interval
        half = stats.t.ppf(0.975, 1) * (abs(d[0] - d[1]) / math.sqrt(2)) / math.sqrt(2)
        assert row["diff"]["mean"] == pytest.approx(sum(d) / 2)
        assert row["diff"]["high"] - row["diff"]["mean"] == pytest.approx(half, abs=1e-9)
        assert row["diff"]["kind"].startswith("paired")
        assert math.isclose(row["mean"], sum(row["values"]) / 2)
    assert res["reference"] == {"start": "base", "base": None, "e2mc": "base"}
    assert set(res["wall_time_s"]["train"]) == {"base-seed0", "base-seed1", "e2mc-seed0", "e2mc-seed1"}
    for f in ("table.md", "results.json", "comparison.json", "report/report.md", "report/accuracy.png"):
        assert (out / f).is_file(), f
    # the report pairs by training seed like the table; recomputing the stored numbers changes nothing
    comp = json.loads((out / "comparison.json").read_text())
    assert comp["train_seeds"] == [[0, 1], [0, 1], [0]]
    assert next(r for r in comp["rows"] if r["arm"] == "e2mc")["diff_kind"] == "paired, n=2"
    table = (out / "table.md").read_text()
    assert restat.restat(out, log=lambda *_: None) == [] and (out / "table.md").read_text() == table
    cfg = (out / "runs" / "e2mc-seed1" / "config.yaml").read_text()
    assert "entropy_weight: 10.0" in cfg and "seed: 1" in cfg and "model.safetensors" in cfg
    assert "name: none" in (out / "runs" / "base-seed0" / "config.yaml").read_text()

    # second invocation: everything is skipped, nothing retrained; a half-finished run resumes
    stamp = (out / "runs" / "base-seed0" / "checkpoints" / "last.pt").stat().st_mtime_ns
    marker = out / "runs" / "e2mc-seed1" / "harness.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "done": False}))
    lines: list[str] = []
    res2 = arms.main(argv, log=lines.append)
    assert sum(line.startswith("skip ") for line in lines) == 3
    assert any(line.startswith("resume e2mc seed 1") for line in lines)
    assert (out / "runs" / "base-seed0" / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp
    assert len(res2["invocations"]) == 2 and res2["arms"]["base"] == res["arms"]["base"]

    with pytest.raises(ConfigError, match="other settings"):
        arms.main([a if a != "1" else "2" for a in argv], log=lambda *_: None)  # --epochs 2 in the same --out


def test_select_mode_uses_train_holdout_and_picks_a_setting(start):
    root, _ = start
    out = root / "select"
    res = arms.main(
        [
            "--start",
            str(root / "starts" / "digits"),
            "--out",
            str(out),
            "--arms",
            "base,e2mc",
            "--seeds",
            "0",
            "--select",
            "--holdout",
            "300",
            "--entropy-weight",
            "5,10",
            "--protocols",
            "knn,rankme",
            *TINY[:-2],
        ],
        log=lambda *_: None,
    )
    assert set(res["arms"]) == {"start", "base-lr0.1@ep1", "e2mc-lr0.1-ew5-cw1@ep1", "e2mc-lr0.1-ew10-cw1@ep1"}
    assert res["settings"]["eval_data"].endswith("split.json") and res["mode"] == "select"
    assert res["reference"]["e2mc-lr0.1-ew5-cw1@ep1"] == "base-lr0.1@ep1"
    k20 = {lab: r["knn/top1_k20"]["mean"] for lab, r in res["arms"].items() if lab.startswith("e2mc")}
    assert res["selection"]["label"] == max(k20, key=k20.get)
    ev = json.loads(next((out / "evals").glob("*.json")).read_text())["result"]["meta"]
    assert ev["n_test"] == 300 and ev["n_train"] == len(build_dataset("digits", "train")) - 300


def test_curve_appends_new_epochs_only(start, tmp_path):
    root, _ = start
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(root / "pretrain" / "config.yaml", run / "config.yaml")
    for e in (1, 2):
        shutil.copy(root / "pretrain" / "checkpoints" / "last.pt", run / "checkpoints" / f"epoch_{e:04d}.pt")
    c = curve.update_curve(run, tmp_path / "curve", log=lambda *_: None)
    assert [p["epoch"] for p in c["points"]] == [1, 2]
    m1, m2 = (p["metrics"] for p in c["points"])
    assert m1 == m2 and 0 < m1["knn/top1_k20"] <= 1 and m1["rankme/projector"] > 1  # same weights, same numbers
    lines: list[str] = []
    curve.update_curve(run, tmp_path / "curve", log=lines.append)
    assert lines[0].startswith("0 new epoch")
    assert all((tmp_path / f"curve.{x}").is_file() for x in ("json", "md", "png"))


def test_plan_transform_and_m_grid_label_only_when_given():
    base = ["--start", "s", "--out", "o", "--epochs", "1", "--lr", "0.03", "--seeds", "0"]
    jobs = arms.plan(arms.parse(base + ["--arms", "base,e2mc"]))
    e2 = next(j for j in jobs if j["arm"] == "e2mc")
    assert "addon.transform" not in e2["overrides"] and "addon.m" not in e2["overrides"]  # old run folders match
    jobs = arms.plan(
        arms.parse(base + ["--arms", "base,e2mc", "--select", "--transform", "sigmoid,gaussian_cdf", "--m", "8"])
    )
    labels = sorted(j["label"] for j in jobs)
    assert labels == ["base-lr0.03", "e2mc-lr0.03-ew10-cw1-cdf-m8", "e2mc-lr0.03-ew10-cw1-sig-m8"]
    cdf = next(j for j in jobs if j["label"].endswith("cdf-m8"))
    assert cdf["overrides"]["addon.transform"] == "gaussian_cdf" and cdf["overrides"]["addon.m"] == 8
    base_job = next(j for j in jobs if j["arm"] == "base")
    assert "addon.transform" not in base_job["overrides"]  # the grid touches E2MC arms only
    with pytest.raises(ConfigError, match="grid"):
        arms.plan(arms.parse(base + ["--transform", "sigmoid,gaussian_cdf"]))


def test_components_first_step_vs_last_epoch_mean(tmp_path):
    from benchmarks.reproduce import components

    head = "wall_time,epoch,step,phase,loss,base.covariance,addon.covariance,rankme\n"
    rows = [
        "1,0,0,init,,,,200\n",
        "2,0,20,train,5,0.8,0.003,\n",
        "3,0,40,train,5,0.9,0.004,\n",
        "4,1,60,train,5,2.0,0.006,\n",
        "5,1,80,train,5,3.0,,\n",
        "6,2,80,epoch,,,,210\n",
    ]
    for seed, scale in ((0, 1.0), (1, 3.0)):
        run = tmp_path / "runs" / f"e2mc-seed{seed}"
        run.mkdir(parents=True)
        (run / "metrics.csv").write_text(head + "".join(r.replace("0.8,", f"{0.8 * scale},") for r in rows))
        (run / "harness.json").write_text(json.dumps({"label": "e2mc", "seed": seed, "done": True}))
    table = components.main([str(tmp_path)])
    comp = table["e2mc"]["components"]
    assert table["e2mc"]["seeds"] == [0, 1]
    assert comp["base.covariance"]["first"] == pytest.approx((0.8 + 2.4) / 2)  # first train row, seed mean
    assert comp["base.covariance"]["last_epoch"] == pytest.approx(2.5)  # epoch 1 rows: (2 + 3) / 2
    assert comp["addon.covariance"] == {"first": 0.003, "last_epoch": pytest.approx(0.006)}  # blank cell skipped
    assert "rankme" not in comp and "addon.entropy" not in comp
    assert "| e2mc | 0,1 |" in (tmp_path / "components.md").read_text()


def test_summary_rows_in_points_with_interval_and_terms(tmp_path):
    from benchmarks.reproduce import summary

    row = {"mean": 0.55, "seeds": [0, 1], "diff": {"mean": 0.005, "low": 0.0001, "high": 0.0099}}
    res = {
        "arms": {
            "start": {"knn/top1_k20": {"mean": 0.5, "seeds": [0]}},
            "base": {"knn/top1_k20": {"mean": 0.545, "seeds": [0, 1], "diff": None}},
            "e2mc@ep2": {"knn/top1_k20": row, "rankme/backbone": {"mean": 240.04, "seeds": [0, 1]}},
        },
        "reference": {"start": "base", "base": None, "e2mc@ep2": "base"},
    }
    (tmp_path / "results.json").write_text(json.dumps(res))
    (tmp_path / "components.json").write_text(
        json.dumps({"e2mc": {"seeds": [0, 1], "components": {"base.covariance": {"first": 0.8, "last_epoch": 2.414}}}})
    )
    (r,) = summary.rows_of(tmp_path)  # start and base (no reference) are not rows
    assert r[:4] == [tmp_path.name, "e2mc@ep2", "0,1", "+0.50 [+0.01, +0.99]"]
    assert r[6] == "240.0" and r[8] == "2.41" and r[7] == r[9] == ""


def test_run_one_keeps_seconds_of_a_stopped_run_and_leaves_it_not_done(tmp_path, monkeypatch):
    from e2mc.errors import RunInterrupted

    def stopped(*_, **kw):
        time.sleep(0.3)  # the part trained before the signal
        raise RunInterrupted(kw["out.dir"], 0, 3)

    monkeypatch.setattr(e2mc, "continue_training", stopped)
    job = {"arm": "e2mc", "label": "e2mc", "seed": 0, "overrides": {"addon.name": "e2mc"}, "dir": tmp_path / "r"}
    with pytest.raises(RunInterrupted):
        arms.run_one(job, {"recipe": "digits_vicreg_e2mc"}, log=lambda *_: None)
    state = json.loads((tmp_path / "r" / "harness.json").read_text())
    assert state["done"] is False and state["train_seconds"] >= 0.2 and "finished" not in state
    state["train_seconds"] = 12.5  # as if the stopped part had taken 12.5 s: a rerun adds to it
    (tmp_path / "r" / "harness.json").write_text(json.dumps(state))
    with pytest.raises(RunInterrupted):
        arms.run_one(job, {"recipe": "digits_vicreg_e2mc"}, log=lambda *_: None)
    assert json.loads((tmp_path / "r" / "harness.json").read_text())["train_seconds"] >= 12.7


def test_table_shows_the_decomposition_in_percent_with_paired_intervals():
    """``--protocols decompose``: the table carries the test error and its parts (errors, in %),
    and each arm's paired difference to base-only, per component."""
    from benchmarks.reproduce import results as R

    def res(err, use, probe, enc):
        return {"decompose": {"test_error": err, "usability": use, "probe_generalisation": probe,
                              "encoder_generalisation": enc}}  # fmt: skip

    per_label = {
        "base": {0: res(0.40, 0.30, 0.06, 0.04), 1: res(0.42, 0.31, 0.07, 0.04)},
        "e2mc": {0: res(0.39, 0.28, 0.07, 0.04), 1: res(0.41, 0.30, 0.07, 0.04)},
    }
    summary = R.summarise(per_label, {"base": None, "e2mc": "base"})
    md = R.to_markdown(summary)
    head = "| arm | decompose/test_error (%) | decompose/usability (%) | decompose/probe_generalisation (%) | "
    assert head + "decompose/encoder_generalisation (%) |" in md
    assert "| base | 41.00 ± 1.41 (2) | 30.50 ± 0.71 (2) | 6.50 ± 0.71 (2) | 4.00 ± 0.00 (2) |" in md
    d = summary["e2mc"]["decompose/usability"]["diff"]
    assert d["kind"].startswith("paired") and math.isclose(d["mean"], -0.015, abs_tol=1e-12)
    assert "| e2mc | -1.00 " in md and "-1.50 [" in md


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.nn.utils.weight_norm: DINO's official head
def test_a_dino_start_runs_its_arms_the_naive_one_included(tmp_path):
    """A tiny-ViT DINO start (head + teacher exported, the centre re-estimated by the careful arms):
    the curve reads its epoch checkpoint, the arms run DINO only, + E2MC and the naive continuation
    (its overrides reach the run's config), and a VICReg start refuses the naive arm in one line."""
    torch.set_num_threads(1)
    vit = "random:timm:vit_tiny_patch16_224:img_size=16,patch_size=4,depth=1,embed_dim=16,num_heads=2"
    sizes = {"hidden": 32, "bottleneck": 8, "out": 64}
    run = e2mc.pretrain(
        "cifar10_dino_pretrain",
        data__dataset="digits",
        data__image_size=16,
        data__limit=256,
        model__init=vit,
        model__head_sizes=sizes,
        optim__batch_size=64,
        train__epochs=1,
        train__probe_size=0,
        train__device="cpu",
        out__dir=str(tmp_path / "pretrain"),
    )
    c = curve.update_curve(run, tmp_path / "curve", protocols=("knn", "rankme"), log=lambda *_: None)
    assert [p["epoch"] for p in c["points"]] == [1] and "rankme/backbone" in c["points"][0]["metrics"]
    # DINO has no projector: the RankMe projector column is its head's bottleneck (models.model.head_embedding)
    assert "rankme/projector" in c["points"][0]["metrics"] and "RankMe projector" in (tmp_path / "curve.md").read_text()
    info = export_start(run / "checkpoints" / "last.pt", tmp_path / "starts" / "dino", log=lambda *_: None)
    assert info["method"] == "dino" and info["heads"] == ["head", "teacher"]
    argv = ["--start", str(tmp_path / "starts" / "dino"), "--out", str(tmp_path / "arms"), "--seeds", "0"]
    argv += ["--recipe", "cifar10_dino_continue", "--batch-size", "64", "--lr", "0.0001", "--epochs", "1"]
    argv += ["--set", "train.max_steps=2", "--set", "train.probe_size=0", "--set", "data.image_size=16"]
    argv += ["--set", "method.center_batches=1", "--protocols", "knn,rankme"]
    res = arms.main([*argv, "--arms", "base,e2mc,naive"], log=lambda *_: None)
    assert set(res["arms"]) == {"start", "base", "e2mc", "naive"} and res["reference"]["naive"] == "base"
    cfg = (tmp_path / "arms" / "runs" / "naive-seed0" / "config.yaml").read_text()
    assert "center_init: zero" in cfg and "continue_temp_warmup: true" in cfg and "action: 'off'" in cfg
    base = (tmp_path / "arms" / "runs" / "base-seed0" / "config.yaml").read_text()
    assert "center_init: estimate" in base and "action: lower_lr" in base
    with pytest.raises(ConfigError, match=r"arm\(s\) \['naive'\] need a start of method \['dino'\]"):
        arms.plan(arms.parse(["--start", "s", "--out", "o", "--epochs", "1", "--lr", "1", "--arms", "naive"]))
