"""The power pilot's base-only probes are the reference probe and its second seed when the held-out
part is the pilot's (the default, at the cap): ``e2mc tune`` starts those probes from the pilot's
run folders (``probes.adopt``) instead of training them again.

The reference here is a tune that cannot adopt (``power.twin`` patched to find nothing): the same
probes trained from scratch. Training on CPU is deterministic, so the adopted probes' per-image
held-out outcomes must equal the retrained ones image for image.
"""

from __future__ import annotations

import json

import pytest

import e2mc
from e2mc.tuning import power
from e2mc.tuning import probes as probes_mod
from tests.conftest import tiny_digits_start

SET = {"optim.batch_size": 64, "train.probe_size": 0, "train.log_every": 1000}
SPACE = {"addons": ["none", "e2mc"], "e2mc": {"entropy_weight": [10], "cov_weight": [1]}, "lr": [None], "epochs": 1}
KW = dict(recipe="digits_vicreg_e2mc", train_images=192, workers=1)


def _tune(ckpt, out):
    return e2mc.tune(
        e2mc.TuneSpec(str(ckpt), "digits", out=out, space={**SPACE, "set": SET}, **KW), log=lambda *a: None
    )


def _probe(out, label):
    return json.loads((out / "probes" / label / "probe.json").read_text())


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    root = tmp_path_factory.mktemp("twin")
    ckpt = tiny_digits_start(root)
    adopted = _tune(ckpt, root / "adopted")
    mp = pytest.MonkeyPatch()
    mp.setattr(power, "twin", lambda out, overrides: None)
    import e2mc.tuning.api as api
    import e2mc.tuning.seeds as seeds

    mp.setattr(seeds, "twin", lambda out, overrides: None)
    try:
        retrained = _tune(ckpt, root / "retrained")
    finally:
        mp.undo()
    assert api.power.twin is not None
    return root, adopted, retrained


def test_the_reference_probe_and_its_second_seed_are_the_pilots(both):
    root, adopted, _ = both
    out = root / "adopted"
    res = json.loads((out / "tune.json").read_text())
    steps = res["rungs"][-1]["steps"]
    assert res["power"]["held_out"] == res["power"]["pilot_images"]  # the default held-out size: the cap
    for label, seed in (("none", 0), ("none-seed1", 1)):
        rec = _probe(out, label)
        assert rec["train_seconds"] == 0.0 or rec["from_pilot"]["steps"] < steps  # resumed past the pilot
        assert rec["from_pilot"]["dir"] == str(out / "pilot" / f"seed{seed}")
        assert rec["from_pilot"]["steps"] == res["power"]["pilot_steps"] and rec["steps"] == steps
        pilot = json.loads((out / "pilot" / f"seed{seed}" / "probe.json").read_text())
        if rec["from_pilot"]["steps"] == steps:  # the same images, the same checkpoint
            assert rec["outcomes"][str(steps)] == pilot["outcomes"][str(steps)]
    assert "from_pilot" not in _probe(out, "e2mc-ew10-cw1")  # an add-on probe has no twin


def test_adopted_probes_score_exactly_as_retrained_ones(both):
    root, adopted, retrained = both
    a, r = root / "adopted", root / "retrained"
    for label in ("none", "none-seed1", "e2mc-ew10-cw1"):
        pa, pr = _probe(a, label), _probe(r, label)
        assert "from_pilot" not in pr
        step = str(pa["steps"])
        assert pa["outcomes"][step] == pr["outcomes"][step]
        assert pa["scores"][step]["knn_top1_k20"] == pytest.approx(pr["scores"][step]["knn_top1_k20"], abs=0)
    ja, jr = (json.loads((p / "tune.json").read_text()) for p in (a, r))
    assert ja["chosen"]["label"] == jr["chosen"]["label"]
    # the pilot's training is counted once: the adopted reference probe adds none
    ta = {p["label"]: p["train_seconds"] for p in ja["probes"]}
    assert ta["none"] == 0.0 and {p["label"]: p["train_seconds"] for p in jr["probes"]}["none"] > 0


def test_adopt_refuses_what_is_not_a_finished_twin(both, tmp_path):
    root, _, _ = both
    pilot = root / "adopted" / "pilot" / "seed0"
    rec = json.loads((pilot / "probe.json").read_text())
    job = {
        "label": "x",
        "dir": str(tmp_path / "x"),
        "overrides": rec["overrides"],
        "steps": rec["steps"],
        "twin": str(pilot),
    }
    assert not probes_mod.adopt({**job, "overrides": {**rec["overrides"], "optim.lr": 9.0}})  # other settings
    assert not probes_mod.adopt({**job, "steps": rec["steps"] - 1})  # the twin is past the probe's steps
    assert not probes_mod.adopt({**job, "twin": None})
    assert not (tmp_path / "x").exists()
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "probe.json").write_text(json.dumps({"label": "x", "overrides": {}}))
    assert not probes_mod.adopt(job)  # an existing probe is never replaced
    assert json.loads((tmp_path / "x" / "probe.json").read_text()) == {"label": "x", "overrides": {}}
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "probe.json").write_text(json.dumps({**rec, "failed": {"step": 1, "reason": "r", "kind": "diverged"}}))
    assert not probes_mod.adopt({**job, "dir": str(tmp_path / "y"), "twin": str(failed)})
    assert probes_mod.adopt({**job, "dir": str(tmp_path / "z")})
    got = json.loads((tmp_path / "z" / "probe.json").read_text())
    assert (
        got["steps"] == rec["steps"] and got["scores"] == {} and (tmp_path / "z" / "checkpoints" / "last.pt").is_file()
    )
    assert (pilot / "checkpoints" / "last.pt").is_file()  # the twin keeps its files
    before = (pilot / "metrics.csv").read_bytes()
    with open(tmp_path / "z" / "metrics.csv", "a") as f:  # a resumed probe appends to its log ...
        f.write("appended\n")
    assert (pilot / "metrics.csv").read_bytes() == before  # ... and the twin's log stays as it was
