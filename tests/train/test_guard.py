"""The collapse guard (``e2mc.train.guard``): its scores and rule, a destructive LR caught and rolled
back to the best checkpoint, a healthy run trained exactly as without it, resume with its state."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from e2mc.config import load_config
from e2mc.errors import ConfigError
from e2mc.report import write_report
from e2mc.train.guard import Guard, agreement, knn_accuracy, knn_indices
from e2mc.train.loop import Trainer
from e2mc.train.run import load_checkpoint, read_metrics


def _weights(run, name="last.pt"):
    return load_checkpoint(run / "checkpoints" / name)["model"]


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _guard_rows(run):
    return [r for r in read_metrics(run / "metrics.csv") if r["phase"] == "guard"]


def test_knn_agreement_and_accuracy():
    torch.manual_seed(0)
    f = torch.randn(40, 8)
    start = knn_indices(f, 5)
    assert start.shape == (40, 5) and not (start == torch.arange(40)[:, None]).any()  # no row is its own neighbour
    assert agreement(start, start) == 1.0
    assert agreement(knn_indices(f * 3.0, 5), start) == 1.0  # cosine: scale-free
    assert agreement(knn_indices(torch.randn(40, 8), 5), start) < 0.5
    labels = torch.arange(40) % 2
    clustered = torch.nn.functional.one_hot(labels).float() + 0.01 * torch.randn(40, 2)
    assert knn_accuracy(knn_indices(clustered, 5), labels) == 1.0


def test_score_and_decision_rule():
    g = Guard(SimpleNamespace(action="rollback", drop=0.5, knn_k=5, reference="best"))
    start = {"rankme": 8.0, "rankme_proj": 4.0, "entropy": -5.0, "agreement": 1.0}
    assert g.score(start) == 1.0 and g.decide(1.0) == "best"
    g.best_score = 1.0
    assert g.score({**start, "rankme": 16.0}) == pytest.approx(2 ** (1 / 4))  # geometric mean of the ratios
    assert g.score({**start, "entropy": -9.0}) == pytest.approx(math.exp(-1.0))  # entropy change: nats
    assert g.decide(0.6) is None and g.decide(0.4) == "drop" and g.decide(1.2) == "best"
    assert math.isnan(g.score({**start, "rankme": math.nan})) and g.decide(math.nan) == "drop"
    assert g.score({**start, "agreement": 0.0}) == pytest.approx(1e-3 ** (1 / 4))  # a zero counts as FLOOR
    assert Guard(SimpleNamespace(action="off")).active is False


def test_a_term_the_loss_maximises_counts_only_when_it_falls():
    """With the E2MC add-on the entropy term is what the loss raises: its rise cannot vouch for the run
    (the measured DINO + E2MC case: +1.6 nats lifted the score to 1.16 while the agreement fell to 0.48)."""
    start = {"rankme": 20.6, "rankme_proj": 5.3, "entropy": -2.8, "agreement": 1.0}
    now = {"rankme": 17.9, "rankme_proj": 4.5, "entropy": -1.2, "agreement": 0.48}
    plain = Guard(SimpleNamespace(action="rollback"))
    e2mc = Guard(SimpleNamespace(action="rollback"), optimised=("entropy",))
    for g in (plain, e2mc):
        g.start = dict(start)
    others = math.log(17.9 / 20.6) + math.log(4.5 / 5.3) + math.log(0.48)
    assert plain.score(now) == pytest.approx(math.exp((others + 1.6) / 4)) and plain.score(now) > 1.1
    assert e2mc.score(now) == pytest.approx(math.exp(others / 4))  # the rise counts as no change
    assert e2mc.score({**start, "entropy": -4.8}) == pytest.approx(math.exp(-2.0 / 4))  # a fall counts


def test_the_e2mc_addon_marks_its_entropy_as_optimised():
    from e2mc.config import AddonConfig
    from e2mc.train.guard import optimised_terms

    assert optimised_terms(AddonConfig(name="e2mc")) == ("entropy",)  # None: the method's default weight
    assert optimised_terms(AddonConfig(name="e2mc", entropy_weight=10.0)) == ("entropy",)
    assert optimised_terms(AddonConfig(name="e2mc", entropy_weight=0.0)) == ()  # the covariance term only
    assert optimised_terms(AddonConfig(name="mmcr")) == optimised_terms(AddonConfig(name="none")) == ()


@pytest.mark.parametrize("reference, verdicts", [("start", [None, None, "drop"]), ("best", ["drop", "drop", "drop"])])
def test_a_transient_spike_is_no_drop_from_the_start(reference, verdicts):
    """The measured false stop (README "Collapse guard"): a naive DINO continuation's score jumped to
    5.95 (the head's embedding scale grew) and the next check's 1.98 counted as a drop from that best.
    Measured from the start (the default) a drop is below (1 - drop) x 1.0: 1.98 and 0.6 are not, 0.4 is."""
    g = Guard(SimpleNamespace(action="rollback", drop=0.5, knn_k=5, reference=reference))
    g.best_score = 1.0
    assert g.decide(5.95) == "best"
    g.best_score = 5.95
    assert [g.decide(s) for s in (1.98, 0.6, 0.4)] == verdicts
    assert g.decide(math.nan) == "drop"  # non-finite: always acts


def test_destructive_lr_is_caught_rolled_back_and_ends_on_the_best(tmp_path, tiny, capsys):
    """LR x 1000 (0.05 -> 50): every check after it drops; the best checkpoint (the start) is restored,
    and after max_rollbacks the run stops with its last checkpoint equal to the best one."""
    run = tmp_path / "r"
    extra = ["train.guard.interval=2", "train.guard.max_rollbacks=2", "train.guard.action=rollback"]  # the same LR
    cfg = tiny(run, "optim.lr=50", "train.max_steps=20", *extra)
    t = Trainer(cfg)
    t.fit()
    assert cfg.addon.name == "e2mc" and t.guard.optimised == ("entropy",)  # the run's guard knows its add-on
    events = json.loads((run / "guard_events.json").read_text())
    assert [e["rollback"] for e in events] == [1, 2, 3] and [e["restored_step"] for e in events] == [0, 0, 0]
    assert [e["action"] for e in events] == ["continued", "continued", "stopped"]
    assert t.guard_stopped and t.state.global_step == events[-1]["step"] < 20
    best, last = load_checkpoint(run / "checkpoints" / "best.pt"), load_checkpoint(run / "checkpoints" / "last.pt")
    assert _equal(best["model"], last["model"]) and best["step"] == 0
    assert last["guard"]["rollbacks"] == 3 and len(last["guard"]["events"]) == 3
    rows = _guard_rows(run)
    assert sum(1 for r in rows if r["guard_event"]) == 3 and float(rows[0]["guard_score"]) == 1.0
    err = capsys.readouterr().err
    assert err.count("collapse guard at step") == 3 and "max_rollbacks=2 reached" in err
    md = write_report(tmp_path / "report", runs=[run])["markdown"].read_text()  # `e2mc report`'s section
    section = md.split("## Collapse guard")[1].split("## ")[0]
    assert (
        section.count("| `r` |") == 3
        and "| stopped |" in section
        and "< 0.5 x the start's score (scores are relative to the start: 1.0 there)" in section
    )


def test_from_random_init_the_score_has_no_agreement_term(tmp_path, tiny):
    """A pre-training from ``random:`` leaves the random start's neighbours as it learns: its guard
    scores RankMe and entropy only; a continuation (see the rollback tests) scores the agreement too."""
    run = tmp_path / "r"
    Trainer(tiny(run, "train.max_steps=4", "train.guard.interval=2")).fit()
    rows = _guard_rows(run)
    assert len(rows) == 3 and all(r["guard_rankme"] not in ("", None) for r in rows)
    assert all(r["guard_agreement"] in ("", None) for r in rows)
    g = Guard(SimpleNamespace(knn_k=3), from_scratch=False)
    g.probe = SimpleNamespace(embed=lambda model, amp: (torch.randn(12, 4), None))
    assert "agreement" in g.measure(None, None)
    g.from_scratch = True
    assert "agreement" not in g.measure(None, None)


def test_lower_lr_continues_at_the_lower_lr(tmp_path, tiny):
    run = tmp_path / "r"
    extra = ["optim.lr=50", "train.max_steps=6", "train.guard.interval=2", "train.guard.action=lower_lr"]
    t = Trainer(tiny(run, *extra, "train.guard.lr_factor=0.001"), quiet=True)
    t.fit()
    events = json.loads((run / "guard_events.json").read_text())
    assert events[0]["action"] == "LR x 0.001" and events[0]["lr"] == pytest.approx(0.05)
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(50 * 0.001 ** len(events))
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 6  # it went on to the end


def test_a_run_shorter_than_an_interval_is_checked_after_its_last_step(tmp_path, tiny, capsys):
    """4 steps under the default interval (50): without a check after the last step the guard would
    only have scored the start (a new user's audio run collapsed so, unseen). LR x 1000 collapses it:
    the last check restores the best (the start) and the run stops; a healthy run is only scored."""
    run = tmp_path / "r"
    t = Trainer(tiny(run, "optim.lr=50", "train.max_steps=4"))
    t.fit()
    (event,) = json.loads((run / "guard_events.json").read_text())
    assert (event["step"], event["restored_step"], event["action"]) == (4, 0, "stopped") and t.guard_stopped
    assert _equal(_weights(run), _weights(run, "best.pt")) and load_checkpoint(run / "checkpoints" / "last.pt")
    assert "the check after the run's last step: no step left to continue" in capsys.readouterr().err
    rows = _guard_rows(run)  # one row per check: the last check's scores and its event together
    assert [(r["step"], bool(r["guard_score"]), bool(r["guard_event"])) for r in rows] == [("0", 1, 0), ("4", 1, 1)]
    Trainer(tiny(tmp_path / "ok", "train.max_steps=4"), quiet=True).fit()
    assert [r["step"] for r in _guard_rows(tmp_path / "ok")] == ["0", "4"]
    assert not (tmp_path / "ok" / "guard_events.json").exists()
    Trainer(tiny(tmp_path / "ok", "train.max_steps=4", "out.resume=true"), quiet=True).fit()  # nothing left to do
    assert [r["step"] for r in _guard_rows(tmp_path / "ok")] == ["0", "4"]  # the last check is not redone


def test_stop_action_stops_at_the_first_drop(tmp_path, tiny):
    run = tmp_path / "r"
    t = Trainer(tiny(run, "optim.lr=50", "train.max_steps=10", "train.guard.interval=2", "train.guard.action=stop"))
    t.fit()
    assert t.guard_stopped and t.state.global_step == 2
    assert _equal(_weights(run), _weights(run, "best.pt"))


def test_healthy_run_trains_exactly_as_without_the_guard(tmp_path, tiny):
    """Probes every step (the most often possible): same weights, optimiser and RNG as guard off, no event."""
    common = ["train.deterministic=true", "train.max_steps=8", "train.guard.labels=true"]
    Trainer(tiny(tmp_path / "on", *common, "train.guard.interval=1"), quiet=True).fit()
    Trainer(tiny(tmp_path / "off", *common, "train.guard.action=off"), quiet=True).fit()
    on, off = (load_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in ("on", "off"))
    assert _equal(on["model"], off["model"])
    assert torch.equal(on["rng"]["per_rank"][0]["torch"], off["rng"]["per_rank"][0]["torch"])
    assert not (tmp_path / "on" / "guard_events.json").exists() and on["guard"]["rollbacks"] == 0
    rows = _guard_rows(tmp_path / "on")
    assert len(rows) == 9 and all(r["guard_knn"] and not r["guard_event"] for r in rows)  # before step 1, then each
    assert not (tmp_path / "off" / "checkpoints" / "best.pt").exists() and not _guard_rows(tmp_path / "off")
    md = write_report(tmp_path / "report", runs=[tmp_path / "on", tmp_path / "off"])["markdown"].read_text()
    assert "The collapse guard scored 9 checks and never acted." in md


def test_resume_keeps_the_guard_state_and_is_bit_identical(tmp_path, tiny):
    common = ["train.deterministic=true", "train.guard.interval=2"]
    Trainer(tiny(tmp_path / "a", *common, "train.max_steps=8"), quiet=True).fit()
    Trainer(tiny(tmp_path / "b", *common, "train.max_steps=4"), quiet=True).fit()
    stopped = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["guard"]
    t = Trainer(tiny(tmp_path / "b", *common, "train.max_steps=8", "out.resume=true"), quiet=True)
    assert t.guard.best_step == stopped["best_step"] and t.guard.best_score == stopped["best_score"]
    assert torch.equal(t.guard.start_nn, stopped["start_nn"])
    t.fit()
    a, b = (load_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in ("a", "b"))
    assert _equal(a["model"], b["model"]) and a["guard"]["best_step"] == b["guard"]["best_step"]
    assert [r["step"] for r in _guard_rows(tmp_path / "a")] == [r["step"] for r in _guard_rows(tmp_path / "b")]


def test_a_checkpoint_without_guard_state_resumes_with_a_fresh_guard(tmp_path, tiny):
    run = tmp_path / "r"
    Trainer(tiny(run, "train.max_steps=2", "train.guard.action=off"), quiet=True).fit()
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    ck.pop("guard")  # as written before the guard existed
    torch.save(ck, run / "checkpoints" / "last.pt")
    t = Trainer(tiny(run, "train.max_steps=4", "out.resume=true"), quiet=True)
    assert t.guard.best_step is None
    t.fit()
    assert load_checkpoint(run / "checkpoints" / "best.pt")["step"] == 2  # scored before its first step


@pytest.mark.parametrize(
    "item, message",
    [
        ("train.guard.action=undo", r"train.guard.action='undo' is not valid; use one of \['rollback'"),
        ("train.guard.drop=1.5", r"train.guard.drop=1.5 is out of range; give a finite number > 0 and < 1"),
        ("train.guard.interval=0", r"train.guard.interval=0 is out of range; give an integer >= 1"),
        ("train.guard.lr_factor=0", r"train.guard.lr_factor=0.0 is out of range"),
        ("train.guard.bogus=1", r"unknown config key 'train.guard.bogus'"),
    ],
)
def test_bad_guard_settings_are_one_line_errors(item, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, [item])
    assert "\n" not in str(info.value)


def test_a_non_finite_loss_restores_the_best_checkpoint(tmp_path, tiny, capsys):
    """A NaN step (poisoned input) is no longer the end of the run: the best checkpoint comes back."""
    run = tmp_path / "r"
    t = Trainer(tiny(run, "train.max_steps=6", "train.guard.interval=2"))
    real, calls = t.views, []

    def views(x):
        calls.append(1)
        v = real(x)
        return [vi * float("nan") for vi in v] if len(calls) == 3 else v

    t.views = views
    t.fit()
    (event,) = json.loads((run / "guard_events.json").read_text())
    assert event["step"] == 3 and event["restored_step"] == 2 and "not finite" in event["reason"]
    assert "collapse guard at step 3: training diverged" in capsys.readouterr().err
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["step"] == 6 and all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step:UserWarning")  # the test's wrapper
def test_weights_broken_by_an_epoch_s_last_step_restore_the_best_checkpoint(tmp_path, tiny, capsys):
    """The epoch's last update makes a weight NaN while its loss was finite: the epoch-end checkpoint
    finds it, and the guard restores the best checkpoint as for a NaN loss (it used to end the run)."""
    run = tmp_path / "r"
    t = Trainer(tiny(run, "data.limit=256", "train.epochs=3", "train.guard.interval=3", "train.log_every=1"))
    per_epoch = len(t.loader)
    assert per_epoch == 4  # the epoch ends at step 4, between the guard's checks at 3 and 6
    opt, real = t.state.optimizer, t.state.optimizer.step

    def step(*args, **kwargs):
        out = real(*args, **kwargs)
        if t.state.global_step + 1 == per_epoch:  # the epoch's last step (counted after the update)
            with torch.no_grad():
                next(t.model.backbone.parameters()).view(-1)[0] = float("nan")
        return out

    opt.step = step
    t.fit()
    (event,) = json.loads((run / "guard_events.json").read_text())
    assert event["step"] == 4 and event["restored_step"] == 3 and "not finite" in event["reason"]
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["step"] == 12 and all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert (run / "checkpoints" / "epoch_0001.pt").exists()  # the epoch's file: the restored state
    assert "collapse guard at step 4" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.nn.utils.weight_norm: DINO's official head
def test_dino_at_lr_x1000_is_rolled_back_with_its_centre(tmp_path, tiny):
    """DINO (its head's bottleneck is the embedding scored; its centre is method state): LR x 1000 is
    caught and the run ends on the best checkpoint, centre included."""
    run = tmp_path / "r"
    sets = ["method.name=dino", "addon.name=none", "model.head_sizes={hidden: 32, bottleneck: 8, out: 64}"]
    extra = ["optim.batch_size=32", "optim.lr=50", "train.max_steps=12", "train.guard.interval=2"]
    t = Trainer(tiny(run, *sets, *extra, "train.guard.action=stop"), quiet=True)
    t.fit()
    rows = _guard_rows(run)
    assert rows[0]["guard_rankme_proj"] and rows[0]["guard_entropy"]  # DINO's head.mlp output
    assert t.guard_stopped and len(t.guard.events) == 1
    best, last = load_checkpoint(run / "checkpoints" / "best.pt"), load_checkpoint(run / "checkpoints" / "last.pt")
    assert _equal(best["model"], last["model"])
    assert torch.equal(best["dino_center"]["center"], last["dino_center"]["center"])


def test_resume_after_a_rollback_keeps_the_lowered_lr_and_the_events(tmp_path, tiny):
    common = ["train.deterministic=true", "optim.lr=50", "train.guard.interval=2", "train.guard.action=lower_lr"]
    common += ["train.guard.lr_factor=0.001"]
    Trainer(tiny(tmp_path / "a", *common, "train.max_steps=8"), quiet=True).fit()
    Trainer(tiny(tmp_path / "b", *common, "train.max_steps=4"), quiet=True).fit()
    Trainer(tiny(tmp_path / "b", *common, "train.max_steps=8", "out.resume=true"), quiet=True).fit()
    a, b = (load_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in ("a", "b"))
    assert a["guard"]["events"] and a["guard"]["events"] == b["guard"]["events"]
    assert _equal(a["model"], b["model"]) and a["scheduler"]["base_lrs"] == b["scheduler"]["base_lrs"]
    assert json.loads((tmp_path / "b" / "guard_events.json").read_text()) == b["guard"]["events"]


def test_compare_names_the_arm_whose_guard_acted(tmp_path):
    """`e2mc compare`'s terminal says which arm's run the guard acted on; the report's section names
    the arm beside the folder when they differ."""
    from e2mc.report.html import guard_blocks, guard_lines

    run = tmp_path / "runs" / "r7"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.csv").write_text("epoch,step,phase\n0,2,guard\n")
    event = {"step": 2, "reason": "guard score 0.01 < 0.5 x the start's score", "restored_step": 0}
    (run / "guard_events.json").write_text(json.dumps([{**event, "action": "LR x 0.1", "lr": 5.0}]))
    ck = run / "checkpoints" / "last.pt"
    comparison = SimpleNamespace(names=["base", "collapsed"], checkpoints=[[tmp_path / "elsewhere.pt"], [ck]])
    (line,) = guard_lines(comparison)
    assert line.startswith("collapse guard: arm collapsed (") and "1 event(s), the last at step 2" in line
    meta = {"r7": {"guard_events": json.loads((run / "guard_events.json").read_text())}}
    table = dict(guard_blocks(meta, {"r7": "collapsed"}))["table"]
    assert table[1][0] == "collapsed (`r7`)" and table[1][4] == "LR x 0.1 at lr 5"
    assert dict(guard_blocks(meta))["table"][1][0] == "`r7`"


def test_a_guard_check_before_a_log_row_leaves_its_img_per_s_right(tmp_path, tiny, monkeypatch):
    """Steps logged after a check count their own time, not the check's and not nothing (a row
    written after a check once read 65,728 img/s). A fake clock: 1 s a step, 100 s a check."""
    import time

    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    real_step, real_measure = Trainer.train_step, Guard.measure

    def step(self, *a, **kw):
        clock[0] += 1.0
        return real_step(self, *a, **kw)

    def measure(self, *a, **kw):
        clock[0] += 100.0
        return real_measure(self, *a, **kw)

    monkeypatch.setattr(Trainer, "train_step", step)
    monkeypatch.setattr(Guard, "measure", measure)
    run = tmp_path / "r"
    t = Trainer(tiny(run, "train.max_steps=4", "train.log_every=100", "train.guard.interval=4"), quiet=True)
    t.fit()
    rows = [r for r in read_metrics(run / "metrics.csv") if r["phase"] == "train"]
    assert rows and all(float(r["img_per_s"]) == pytest.approx(t.global_batch) for r in rows)
