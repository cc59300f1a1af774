"""The collapse guard on a DINO continuation of a tiny ViT (issue 24, item 4): the naive continuation
(teacher temperature at its warm-up value, zero centre, momentum schedule restarted) is measured,
the destructive one is caught, rolled back and ends on the best checkpoint, and the careful
defaults are never stopped.

Measured (digits at 16 px, ViT depth 2 / width 32 / patch 4, head 64-16-256, AdamW, batch 32,
``train.deterministic``, 80 steps checked every 5; README "Collapse guard"): the naive DINO options
alone do not collapse at this scale (lowest score 0.92 at the continuation's LR 0.002; 0.82 even with
no centring, teacher temperature 0.001 and momentum 0). What reliably collapses is the naive
continuation as users run it, with the pre-training's LR restarted: at 0.05 (25x) the score is 0.22
after 5 steps, 0.58 after the rollback, 0.10 next (stopped); the careful defaults at 0.002 score
0.82-1.09 over 40 steps (threshold 0.54). At 0.05 the careful DINO options collapse too (0.25): the
destructive part is the restarted LR, not the centre or the temperature. Restored at the same LR
(``action=rollback``) the naive run collapses after each of its restores (0.22, 0.10, 0.12, 0.13); at a
tenth of it (``lower_lr``, the default) it collapses once, then scores 1.06-1.99 to step 40.
"""

import json

import pytest
import torch

from e2mc.errors import ConfigError
from e2mc.train.guard import Guard
from e2mc.train.loop import Trainer
from e2mc.train.run import load_checkpoint, read_metrics
from tests.train.conftest import tiny_config

VIT = [
    "model.init=random:timm:vit_tiny_patch16_224:patch_size=4,depth=2,embed_dim=32,num_heads=2",
    "method.name=dino",
    "addon.name=none",
    "model.head_sizes={hidden: 64, bottleneck: 16, out: 256}",
    "optim.name=adamw",
    "optim.weight_decay=0.04",
    "optim.batch_size=32",
    "train.deterministic=true",
]
NAIVE = ["method.continue_temp_warmup=true", "method.center_init=zero", "method.continue_momentum=0.996"]
CAREFUL_LR, RESTARTED_LR = 0.002, 0.05  # the continuation's LR; a restarted pre-training peak (25x)


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A short DINO pre-training of the tiny ViT: a full checkpoint with heads, teacher and centre."""
    run = tmp_path_factory.mktemp("dino_start")
    cfg = tiny_config(run, *VIT, "train.max_steps=20", "train.guard.action=off", f"optim.lr={CAREFUL_LR}")
    Trainer(cfg, quiet=True).fit()
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["dino_center"]["known"] and ck["dino_center"]["center"].abs().sum() > 0
    return run / "checkpoints" / "last.pt"


def _continue(tiny, out, start, *sets):
    extra = ["model.head_sizes={}", "train.epochs=3", "train.guard.interval=5", *sets]
    t = Trainer(tiny(out, *VIT, f"model.init={start}", *extra, mode="continue"), quiet=True)
    t.fit()
    return t


def _scores(run):
    return [
        float(r["guard_score"]) for r in read_metrics(run / "metrics.csv") if r["phase"] == "guard" and r["guard_score"]
    ]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_the_naive_options_start_at_zero_and_the_warm_up_temperature(tmp_path, tiny, start):
    """``center_init=zero`` ignores the file's centre; the first steps run at the warm-up temperature."""
    from e2mc.methods.dino import teacher_temp

    t = Trainer(tiny(tmp_path / "r", *VIT, f"model.init={start}", "model.head_sizes={}", *NAIVE, mode="continue"))
    assert t.state.method_state.known and t.state.method_state.center.abs().sum() == 0
    assert teacher_temp(t.cfg, 0) == pytest.approx(0.04)
    careful = Trainer(tiny(tmp_path / "c", *VIT, f"model.init={start}", "model.head_sizes={}", mode="continue"))
    saved = load_checkpoint(start)["dino_center"]["center"]
    assert torch.equal(careful.state.method_state.center, saved) and teacher_temp(careful.cfg, 0) == 0.07
    with pytest.raises(ConfigError, match=r"method.center_init='file' is not valid; use one of \['estimate', 'zero'\]"):
        tiny(tmp_path / "b", *VIT, f"model.init={start}", "method.center_init=file", mode="continue")


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_naive_dino_continuation_is_caught_rolled_back_and_ends_on_the_best(tmp_path, tiny, start):
    run = tmp_path / "naive"
    sets = [*NAIVE, f"optim.lr={RESTARTED_LR}", "train.max_steps=40", "train.guard.max_rollbacks=1"]
    t = _continue(tiny, run, start, *sets, "train.guard.action=rollback")  # at the same LR: it collapses again
    events = json.loads((run / "guard_events.json").read_text())
    assert [e["action"] for e in events] == ["continued", "stopped"] and t.guard_stopped
    assert all(e["restored_step"] == 0 for e in events) and t.state.global_step < 40
    best, last = load_checkpoint(run / "checkpoints" / "best.pt"), load_checkpoint(run / "checkpoints" / "last.pt")
    assert best["step"] == 0 and best["model"].keys() == last["model"].keys()
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    assert torch.equal(best["dino_center"]["center"], last["dino_center"]["center"])
    assert min(_scores(run)) < 0.5


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_by_default_the_naive_continuation_recovers_at_a_tenth_of_the_lr(tmp_path, tiny, start):
    """The default action (lower_lr): restored at step 5, LR 0.05 -> 0.005, the run then stays healthy
    and trains its 40 steps (rollback at the same LR collapsed again after each restore: above)."""
    run = tmp_path / "naive"
    t = _continue(tiny, run, start, *NAIVE, f"optim.lr={RESTARTED_LR}", "train.max_steps=40")
    events = json.loads((run / "guard_events.json").read_text())
    assert [(e["step"], e["action"]) for e in events] == [(5, "LR x 0.1")]
    assert events[0]["lr"] == pytest.approx(RESTARTED_LR * 0.1) and not t.guard_stopped
    assert t.state.global_step == 40
    scores = _scores(run)
    assert scores[1] < 0.5 and min(scores[2:]) > 0.5  # the collapse, then no other drop


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_the_careful_defaults_are_never_stopped(tmp_path, tiny, start):
    run = tmp_path / "careful"
    t = _continue(tiny, run, start, f"optim.lr={CAREFUL_LR}", "train.max_steps=40")
    assert not t.guard_stopped and t.guard.events == [] and not (run / "guard_events.json").exists()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 40
    scores = _scores(run)
    assert len(scores) == 9 and min(scores) > 0.75  # before step 1, then every 5 steps


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_score_spike_does_not_stop_a_run_measured_from_the_start(tmp_path, tiny, start, monkeypatch):
    """A transient rise of the score (measured: the naive options at 2.5x the continuation's LR grew the
    head's embedding scale, the entropy term lifted the score to 5.95 at step 55, then ~2 again;
    benchmarks/bench_guard_rule.py). Measured from the best so far (``reference=best``) the fall
    after it counts as a drop and the run is stopped; measured from the start (the default) it does
    not, and the run trains its 80 steps. The spike is put in (the check at step 30 scores 20x what it
    measured): where a real one comes depends on the CPU's float rounding, which a test must not."""
    real, calls = Guard.score, []

    def spiking(self, values):
        calls.append(1)
        return real(self, values) * (20.0 if len(calls) == 7 else 1.0)  # checks at steps 0, 5, ..., 30

    monkeypatch.setattr(Guard, "score", spiking)
    sets = [*NAIVE, f"optim.lr={CAREFUL_LR * 2.5}", "train.max_steps=80", "train.guard.action=stop"]
    best = _continue(tiny, tmp_path / "best", start, *sets, "train.guard.reference=best")
    assert best.guard_stopped and best.state.global_step == 35  # the check after the spike
    calls.clear()
    default = _continue(tiny, tmp_path / "start", start, *sets)
    scores = _scores(tmp_path / "start")
    assert not default.guard_stopped and default.state.global_step == 80 and default.guard.events == []
    assert max(scores) == scores[6] > 2 * max(scores[7:])  # the spike and the fall
    assert min(scores) > 0.5
