"""A probe that diverges is a result, not an error: ``e2mc tune`` records it as failed, leaves it out of
the ranking and goes on; a base-only reference that diverges is a one-line error.

The divergence is real: an LR of 1000 on the tiny digits start (no mocking of the trainer). With 3
steps the trainer's finiteness checks stop it (``TrainingDiverged``); after 1 step its weights are
still finite but its features overflow float16 when the probe is scored; with ``train.guard.action=stop``
checked every step the collapse guard stops it.
"""

from __future__ import annotations

import json

import pytest

import e2mc
from e2mc.errors import TrainingDiverged
from e2mc.tuning import power
from e2mc.tuning import probes as probes_mod
from e2mc.tuning.halving import rungs_for
from e2mc.tuning.markdown import lr_table
from tests.conftest import tiny_digits_start

# the guard off: its check after the last step would stop these probes before the trainer's finiteness
# checks do (test_a_probe_the_collapse_guard_stopped_is_failed_too turns it on)
SET = {"optim.batch_size": 64, "train.probe_size": 0, "train.log_every": 1000, "train.guard.action": "off"}
E2MC = {"entropy_weight": [10], "cov_weight": [1]}
SPACE = {"addons": ["none", "e2mc"], "e2mc": E2MC, "lr": [None, 1000], "epochs": 1, "set": SET}
BAD = ("none-lr1000", "e2mc-ew10-cw1-lr1000")
KW = dict(recipe="digits_vicreg_e2mc", holdout=120, train_images=192, workers=1)


def run_tune(checkpoint, out, log, **fields):
    return e2mc.tune(e2mc.TuneSpec(str(checkpoint), "digits", out=out, **{**KW, **fields}), log=log)


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    root = tmp_path_factory.mktemp("diverge")
    return root, tiny_digits_start(root)


def test_a_diverging_probe_is_recorded_left_out_and_never_retrained(start, monkeypatch):
    root, ckpt = start
    out, lines = root / "full", []
    # one rung of 3 steps (the full grid): the LR-1000 probes diverge in training
    res = run_tune(ckpt, out, lines.append, space=SPACE, budget="full")
    failed = {f["label"]: f for f in res["failed"]}
    assert set(failed) == set(BAD)
    saved = json.loads((out / "tune.json").read_text())
    assert [f["label"] for f in saved["failed"]] == [f["label"] for f in res["failed"]]
    md, page = (out / "tune.md").read_text(), (out / "tune.html").read_text()
    r0 = res["rungs"][0]
    for lab, f in failed.items():
        fl = f["failed"]
        assert fl["kind"] == "diverged" and 1 <= fl["step"] <= 3 and "not finite" in fl["reason"]
        rec = json.loads((out / "probes" / lab / "probe.json").read_text())
        assert rec["failed"] == fl and rec["scores"] == {} and rec["steps"] == fl["step"]
        assert not (out / "probes" / lab / "checkpoints" / "last.pt").exists()  # nothing non-finite written
        mine = [line for line in lines if line.startswith(f"probe {lab} ")]  # its one line
        assert len(mine) == 1 and mine[0].startswith(f"probe {lab} diverged at step {fl['step']} (")
        assert mine[0].endswith("; left out of the ranking")
        text = f"diverged at step {fl['step']}"
        assert f"| {lab} | {text} | - | - | - | - | - | - |" in md  # the rung's paired table
        assert any(row.startswith(f"| - | {lab} | 0 |") and row.endswith(f"| {text} |") for row in md.splitlines())
        assert text in page
    assert set(BAD) <= set(r0["probes"]) and set(r0["failed"]) == set(BAD)
    assert not set(r0["scores"]) & set(BAD) and not set(r0["paired"]) & set(BAD)
    assert res["chosen"]["label"] not in BAD and not {p["label"] for p in res["probes"]} & set(BAD)
    assert not set(res["final_seeds"]["probes"]) & set(BAD)
    steps = sum(p["steps"] for p in res["probes"]) + sum(f["steps"] for f in res["failed"])
    assert res["cost"]["trained_epochs"] == pytest.approx(steps / res["batches_per_epoch"])  # their steps count
    assert "(the 2 failed probe(s) included)" in md and f"First rung: {res['power']['first_rung']}." in md
    assert "| - | diverged" not in "\n".join(lr_table(res))  # each add-on has an LR that trained
    # the same command again: nothing is trained again, the failed probes stay failed
    trained = []
    real = probes_mod._train
    monkeypatch.setattr(
        probes_mod, "_train", lambda src, over, run_dir: trained.append(run_dir) or real(src, over, run_dir)
    )
    again_lines = []
    again = run_tune(ckpt, out, again_lines.append, space=SPACE, budget="full")
    assert trained == [] and again["failed"] == res["failed"] and again["chosen"]["label"] == res["chosen"]["label"]
    assert sum("left out of the ranking" in line for line in again_lines) == 2


def test_a_probe_whose_features_overflow_is_left_out_of_the_next_rung(start):
    """After 1 step at LR 1000 the weights are finite but the features overflow: failed at step 1, no advance."""
    root, ckpt = start
    lines = []
    res = run_tune(ckpt, root / "rungs", lines.append, space=SPACE, final_seeds=1)
    assert len(res["rungs"]) == 2 and res["rungs"][0]["steps"] == 1
    failed = {f["label"]: f["failed"] for f in res["failed"]}
    assert set(failed) == set(BAD) and all(f["kind"] == "diverged" and f["step"] == 1 for f in failed.values())
    assert not set(res["rungs"][1]["probes"]) & set(BAD) and res["chosen"]["label"] not in BAD
    assert sum(line.startswith("probe ") and "left out of the ranking" in line for line in lines) == 2


def test_a_probe_that_fails_at_a_later_rung_keeps_its_earlier_score_on_a_rerun(start, monkeypatch):
    """LR 100 trains 1 step fine (and advances), then diverges by step 3; a rerun rebuilds the same rungs."""
    root, ckpt = start
    space = {"addons": ["none"], "lr": [None, 3, 10, 30, 100], "epochs": 1, "set": SET}
    out = root / "later"
    res = run_tune(ckpt, out, lambda *a: None, space=space, final_seeds=1)
    r0, r1 = res["rungs"]
    assert "none-lr100" in r0["scores"] and "none-lr100" in r1["probes"] and set(r1["failed"]) == {"none-lr100"}
    f = res["failed"][0]
    assert f["label"] == "none-lr100" and f["rung"] == 1 and f["failed"]["step"] == r1["steps"]
    assert f"| none-lr100 | diverged at step {r1['steps']} | - |" in (out / "tune.md").read_text()
    monkeypatch.setattr(probes_mod, "_train", lambda *a: pytest.fail("a rerun trained a probe"))
    lines = []
    again = run_tune(ckpt, out, lines.append, space=space, final_seeds=1)
    assert again["rungs"] == res["rungs"] and again["failed"] == res["failed"]
    assert [line for line in lines if "left out of the ranking" in line] == [
        line for line in lines if line.startswith("probe none-lr100 diverged")
    ]


def test_a_probe_the_collapse_guard_stopped_is_failed_too(start):
    """train.guard.action=stop checked every step: LR 1000 collapses at step 1, the guard restores and stops it."""
    root, ckpt = start
    guard = {
        "train.probe_size": 64,
        "train.guard.action": "stop",
        "train.guard.interval": 1,
        "train.guard.probe_size": 64,
    }
    space = {**SPACE, "set": {**SET, **guard}}
    lines, out = [], root / "guard"
    res = run_tune(ckpt, out, lines.append, space=space, budget="full", final_seeds=1)
    failed = {f["label"]: f["failed"] for f in res["failed"]}
    assert set(failed) == set(BAD) and res["chosen"]["label"] not in BAD
    md = (out / "tune.md").read_text()
    for lab, f in failed.items():
        assert f["kind"] == "guard_stopped" and f["reason"].startswith(f"collapse guard stopped it at step {f['step']}")
        assert f"| {lab} | collapse guard stopped it at step {f['step']} | - |" in md
        assert json.loads((out / "probes" / lab / "probe.json").read_text())["scores"] == {}
        mine = [line for line in lines if line.startswith(f"probe {lab} ")]
        assert len(mine) == 1 and mine[0].startswith(f"probe {lab} was stopped by the collapse guard at step")


def test_the_reference_diverging_is_a_one_line_error_and_keeps_the_other_probes(start):
    root, ckpt = start
    space = {**SPACE, "lr": [1000, None]}  # the first base-only point (the reference) is none-lr1000
    out = root / "ref"
    with pytest.raises(TrainingDiverged, match="reference probe none-lr1000 diverged at step") as e:
        run_tune(ckpt, out, lambda *a: None, space=space, budget="full", select="label-free:rankme")
    msg = str(e.value)
    assert "\n" not in msg and "remove that LR from the space" in msg
    for lab in ("none", "e2mc-ew10-cw1"):  # the rung's other probes: trained, scored, kept
        assert json.loads((out / "probes" / lab / "probe.json").read_text())["scores"]
    # with held-out selection the pilot (base-only at the reference's LR) diverges first: one line too
    with pytest.raises(TrainingDiverged, match="the power pilot .* diverged at step") as e:
        run_tune(ckpt, root / "pilot", lambda *a: None, space=space, budget="full")
    assert "\n" not in str(e.value) and "remove that LR from the space" in str(e.value)


def test_failed_probe_texts_and_their_parsing():
    msg = (
        "training diverged: model.backbone.layer4.0.conv1.weight is not finite at step 3 (found before writing a "
        "checkpoint; nothing was written); no good checkpoint of this run exists yet (none was written). Lower "
        "optim.lr, set train.grad_clip"
    )
    f = probes_mod.diverged_entry(TrainingDiverged(msg, step=3, term="model.backbone.layer4.0.conv1.weight"))
    assert f == {
        "step": 3,
        "reason": "diverged at step 3: model.backbone.layer4.0.conv1.weight is not finite",
        "kind": "diverged",
    }
    assert probes_mod.failed_text(f) == "diverged at step 3"
    other = probes_mod.diverged_entry(TrainingDiverged(msg))  # raised elsewhere: no step, the first clause
    assert other["step"] is None and other["reason"].startswith("training diverged: model.backbone")
    assert probes_mod.failed_line("none-lr0.0948", f) == (
        "probe none-lr0.0948 diverged at step 3 (model.backbone.layer4.0.conv1.weight is not finite); "
        "left out of the ranking"
    )
    g = {"step": 40, "reason": "collapse guard stopped it at step 40: guard score 0.01 < (1 - 0.5) x the start's 1"}
    g["kind"] = "guard_stopped"
    assert probes_mod.failed_text(g) == "collapse guard stopped it at step 40"
    assert probes_mod.failed_line("vc", g).startswith("probe vc was stopped by the collapse guard at step 40 (guard")


def test_an_addon_whose_every_lr_failed_says_so():
    fail = {"step": 3, "reason": "diverged at step 3: loss is not finite", "kind": "diverged"}
    res = {
        "probes": [{"label": "none", "addon": "none", "overrides": {}, "rung": 0, "metrics": {"knn_top1_k20": 0.5}}],
        "failed": [
            {"label": f"vc-lr{lr}", "addon": "vc", "overrides": {"optim.lr": lr}, "failed": fail} for lr in (1, 10)
        ],
    }
    rows = lr_table(res)
    assert "| none | none | the recipe's | 0 | 50.00 |" in rows and "| vc | diverged at every LR | - | - | - |" in rows


def test_the_first_rung_note_when_base_only_never_moved():
    """The pilot reached the last rung's length without base-only's RankMe moving by --min-move: one rung."""
    pw = {
        "pilot_steps": 312,
        "first_epochs": 2.0,
        "moved": [{"steps": 35, "rankme_change": 0.0}, {"steps": 312, "rankme_change": 0.0004}],
        "min_move": 0.05,
        "moved_enough": False,
    }
    note = power.first_rung_note(pw, rungs_for(9, 2.0, 0))
    assert "did not move by 5%" in note and "within the last rung's length (2 epochs" in note
    assert "one rung: every probe is trained to the end (the full grid)" in note and "move by then" not in note
    del pw["moved_enough"]  # a tune.json of an older e2mc: decided from the recorded change
    assert power.first_rung_note(pw, rungs_for(9, 2.0, 0)) == note
    moved = {**pw, "first_epochs": 0.667, "moved_enough": True, "moved": [{"steps": 104, "rankme_change": 0.08}]}
    text = power.first_rung_note(moved, rungs_for(9, 2.0, 1))
    assert text.startswith("base-only's held-out RankMe moved 8.0% (at least 5%)") and "0.667 epochs" in text
