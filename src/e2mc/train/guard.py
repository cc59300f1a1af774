"""The collapse guard: label-free scores of a fixed probe set, the decision rule and the best
checkpoint's bookkeeping (``train.guard.*``; README "Collapse guard" says how its defaults were measured).

``Guard`` holds the probe set (fixed at the run's start: ``monitor.probe_indices`` of the run's
seed), the start's values and its kNN neighbours, the best score so far and its step, the events
and the rollbacks; ``state_dict``/``load_state_dict`` put all of it into the run's checkpoints.
``GuardSteps`` is the ``Trainer``'s side (a mixin): it scores the model before the first step and
every ``interval`` steps, agrees the decision over the ranks (rank 0 scores), writes
``checkpoints/best.pt`` on a new best and, on a drop, a non-finite loss or a non-finite state found
before a checkpoint is written (an epoch's last update), restores the best
checkpoint's model, optimiser, scaler and method state (progress, schedule and RNG streams go on),
then continues, lowers the LR or stops.

The score is the geometric mean of ratios to the start (1.0 at the start): RankMe of the backbone
features and of the projector output, ``exp`` of the change of the E2MC marginal entropy (nats),
the kNN agreement with the start's neighbours (fraction of each probe image's ``knn_k`` cosine
neighbours still among them; not for a run from random initialisation, ``model.init: random:...``,
whose start's neighbours are a random network's) and, with ``labels``, the leave-one-out kNN
accuracy on the probe. A term the run's own loss maximises counts only when it falls: with the E2MC
add-on (entropy weight not 0) the entropy term is capped at the start's value, since the add-on
raises it whatever happens to the features (a DINO + E2MC run's +1.6 nats lifted its score to 1.16
while the kNN agreement fell to 0.48; ``benchmarks/bench_guard_rule.py``).
Every probe is computed under ``no_grad`` in eval mode with the RNG state kept, so a healthy run
trains exactly as without the guard.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from e2mc.metrics import marginal_entropy, rankme
from e2mc.train import distributed as D
from e2mc.train import monitor
from e2mc.train import run as R
from e2mc.train.monitor import _safe

FLOOR = 1e-3  # a ratio below this counts as this (log of a zero agreement or accuracy)
EVENTS_FILE = "guard_events.json"


def knn_indices(f: torch.Tensor, k: int) -> torch.Tensor:
    """``(N, k)`` indices of each row's ``k`` nearest other rows by cosine similarity."""
    f = torch.nn.functional.normalize(f.double(), dim=1)
    sim = f @ f.T
    sim.fill_diagonal_(-math.inf)
    return sim.topk(min(k, f.shape[0] - 1), dim=1).indices


def agreement(now: torch.Tensor, start: torch.Tensor) -> float:
    """Mean fraction of each row's neighbours in ``now`` that are also among its ``start`` ones."""
    n = start.shape[0]
    member = torch.zeros(n, n, dtype=torch.bool)
    member.scatter_(1, start, True)
    return float(member.gather(1, now).float().mean())


def knn_accuracy(nn_idx: torch.Tensor, labels: torch.Tensor) -> float:
    """Leave-one-out accuracy of the majority vote of each row's neighbours (ties: lowest label)."""
    votes = labels[nn_idx]
    counts = torch.zeros(labels.shape[0], int(labels.max()) + 1).scatter_add_(1, votes, torch.ones_like(votes).float())
    return float((counts.argmax(dim=1) == labels).float().mean())


def optimised_terms(addon: Any) -> tuple[str, ...]:
    """The guard terms that the add-on ``addon`` (an ``AddonConfig``) maximises directly: E2MC's
    entropy, unless its weight is 0."""
    if addon.name == "e2mc" and addon.entropy_weight != 0:  # None: the method's default weight (not 0)
        return ("entropy",)
    return ()


class Guard:
    """Scores and decisions of one run's collapse guard (see the module docstring).

    Args:
        cfg: ``train.guard`` (a ``GuardConfig``).
        probe: a ``monitor.ProbeMonitor`` of the probe images (rank 0), or None (other ranks, or
            ``probe_size`` 0: then only a non-finite loss triggers the guard).
        labels: the probe images' labels (``cfg.labels``), or None.
        entropy_transform: the box transform of the E2MC entropy.
        from_scratch: a run from random initialisation (no agreement term).
        optimised: the terms the run's loss maximises (``("entropy",)`` with the E2MC add-on): their
            rises are not counted.
    """

    def __init__(
        self,
        cfg: Any,
        probe: Any = None,
        labels: torch.Tensor | None = None,
        entropy_transform: str = "sigmoid",
        from_scratch: bool = False,
        optimised: tuple[str, ...] = (),
    ):
        self.cfg, self.probe, self.labels, self.transform = cfg, probe, labels, entropy_transform
        self.optimised = tuple(optimised)
        # from random initialisation the start's neighbours are a random network's: a learning
        # network leaves them (agreement 1.0 -> 0.44 in 450 healthy DINO steps), so no agreement term
        self.from_scratch = from_scratch
        self.start: dict[str, float] | None = None  # the start's values (rank 0)
        self.start_nn: torch.Tensor | None = None
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.events: list[dict] = []
        self.rollbacks = 0
        self.checked_step: int | None = None  # the step of the last check (kept: a resume does not redo it)

    @classmethod
    def for_run(cls, setup: Any, resumed: dict | None) -> Guard:
        """The guard of a ``TrainerSetup`` (its probe on rank 0), restored from the checkpoint
        ``resumed`` from (one without a guard state starts afresh)."""
        cfg = setup.cfg.train.guard
        probe = labels = None
        if setup.dist.is_main and cfg.probe_size > 1 and cfg.action != "off":
            from e2mc.data import eval_transform

            info, size = setup.dataset.info, setup.image_size
            idx = monitor.probe_indices(len(setup.dataset), cfg.probe_size, setup.cfg.train.seed)
            probe = monitor.ProbeMonitor(setup.dataset, idx, lambda b: eval_transform(b, info, size), setup.device)
            if cfg.labels:
                targets = torch.tensor([int(setup.dataset.targets[i]) for i in idx])
                labels = targets if bool((targets >= 0).all()) else None
        scratch = str(setup.cfg.model.init or "").startswith("random:")
        transform = setup.cfg.addon.transform or setup.method.e2mc_defaults[2]
        guard = cls(cfg, probe, labels, transform, scratch, optimised_terms(setup.cfg.addon))
        guard.load_state_dict(None if resumed is None else resumed.get("guard"))
        return guard

    @property
    def active(self) -> bool:
        return self.cfg.action != "off"

    def measure(self, model: torch.nn.Module, amp: torch.dtype | None) -> dict[str, float]:
        """The raw label-free values of ``model`` on the probe (the first call fixes the start)."""
        f, z = self.probe.embed(model, amp)
        nn_now = knn_indices(f, self.cfg.knn_k) if torch.isfinite(f).all() else None
        if self.start_nn is None and nn_now is not None:
            self.start_nn = nn_now
        out = {"rankme": _safe(rankme, f)}
        if z is not None:
            out["rankme_proj"] = _safe(rankme, z)
            out["entropy"] = _safe(marginal_entropy, z, self.transform)
        if nn_now is None:  # non-finite embeddings: the score is NaN
            out["agreement"] = math.nan
        elif not self.from_scratch:
            out["agreement"] = agreement(nn_now, self.start_nn)
        if self.labels is not None:
            out["knn"] = knn_accuracy(nn_now, self.labels) if nn_now is not None else math.nan
        return out

    def score(self, values: dict[str, float]) -> float:
        """The geometric mean of the values' ratios to the start's (NaN when any is not finite)."""
        if self.start is None:
            self.start = dict(values)
        logs = []
        for k, v in values.items():
            s = self.start.get(k)
            if s is None or not math.isfinite(s) or (k != "entropy" and s <= 0):
                continue  # nothing to compare with (e.g. a start whose metric failed)
            if not math.isfinite(v):
                return math.nan
            log = v - s if k == "entropy" else math.log(max(v / s, FLOOR))  # entropy: nats = log ratio
            logs.append(min(log, 0.0) if k in self.optimised else log)
        return math.exp(sum(logs) / len(logs)) if logs else 1.0

    def decide(self, score: float | None) -> str | None:
        """``"best"`` (a new best), ``"drop"`` (act) or None, for rank 0's ``score``."""
        if score is None:
            return None
        if not math.isfinite(score):
            return "drop" if self.best_score is not None else None
        if self.best_score is None or score > self.best_score:
            return "best"
        return "drop" if score < (1 - self.cfg.drop) * self.reference_score else None

    @property
    def reference_score(self) -> float:
        """What a drop is measured from: the start's score (1.0 by construction) or the best so far."""
        return self.best_score if self.cfg.reference == "best" else 1.0

    def state_dict(self) -> dict:
        """What the run's checkpoints keep (plain tensors and builtins)."""
        return {
            "start": self.start,
            "start_nn": self.start_nn,
            "best_score": self.best_score,
            "best_step": self.best_step,
            "events": [dict(e) for e in self.events],
            "rollbacks": self.rollbacks,
            "checked_step": self.checked_step,
        }

    def load_state_dict(self, state: dict | None) -> None:
        """Restore ``state_dict``'s values (None: a checkpoint without a guard, which starts afresh)."""
        if not state:
            return
        self.start, self.start_nn = state.get("start"), state.get("start_nn")
        self.best_score, self.best_step = state.get("best_score"), state.get("best_step")
        self.events, self.rollbacks = list(state.get("events") or []), int(state.get("rollbacks", 0))
        self.checked_step = state.get("checked_step")


class GuardSteps:
    """The ``Trainer``'s guard steps (a mixin over ``TrainerSetup``'s attributes; its ``guard`` is
    built by ``Guard.for_run``)."""

    guard_stopped: bool = False

    @property
    def _best_path(self):
        return self.run.path / "checkpoints" / R.BEST

    def _guard_check(self, last: bool = False) -> None:
        """Score the model (rank 0), agree the decision, keep a new best or act on a drop (``last``:
        the check after the run's last step, where a drop ends the run on the best checkpoint)."""
        g, s = self.guard, self.state
        if not g.active:
            return
        g.checked_step = s.global_step
        t0 = time.perf_counter()
        score, values = None, {}
        if g.probe is not None:
            self._stage = f"the collapse guard's probe of train.guard.probe_size={g.cfg.probe_size} images"
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):  # the run's RNG streams are left as they were
                values = g.measure(self.model, self.amp_dtype)
            score = g.score(values)
        verdict = g.decide(score)
        new_best, drop = D.any_flags((verdict == "best", verdict == "drop"), self.dist)
        row = None  # one guard row per check: its scores, and on a drop the event too
        if score is not None:
            row = {"epoch": s.epoch, "step": s.global_step, "phase": "guard", "guard_score": score}
            row.update({f"guard_{k}": v for k, v in values.items()})
            if not drop:
                self.run.write_row(row)
        if new_best:
            g.best_score, g.best_step = score, s.global_step
            state = s.checkpoint(self.cfg, self.dist, self.per_device_batch, self.run.metrics_rows)
            state["guard"] = g.state_dict()
            self.run.write_best(state)
        elif drop:
            if score is None or not math.isfinite(score):
                self._guard_act("guard score not finite (the probe's embeddings are NaN/Inf)", last, row)
            else:
                if g.cfg.reference == "best":
                    ref = f"the best score so far, {g.best_score:.3g}"
                else:
                    ref = "the start's score (scores are relative to the start: 1.0 there)"
                self._guard_act(f"guard score {score:.3g} < {1 - g.cfg.drop:.3g} x {ref}", last, row)
        # the check's time does not count against img/s; steps logged after it still count theirs
        self._t_last += time.perf_counter() - t0

    def _guard_last(self) -> None:
        """The check after the run's last step, unless one ran at that step (a run shorter than an
        interval is otherwise scored only at its start); before the last checkpoint is written."""
        if self.guard.checked_step != self.state.global_step and not self.guard_stopped:
            self._stage = "the collapse guard's check after the last step"
            self._guard_check(last=True)

    def _guard_act(self, reason: str, last: bool = False, row: dict | None = None) -> None:
        """Restore the best checkpoint and continue, lower the LR or stop (``last``: no step is left,
        the run stops); one line, a row, an event."""
        g, s, cfg = self.guard, self.state, self.guard.cfg
        self._pending = []
        g.rollbacks += 1
        g.checked_step = s.global_step  # the restored best was scored: no other check at this step
        state = R.load_checkpoint(self._best_path)
        s.restore_training(state, self.per_device_batch, self.log)
        stop = last or cfg.action == "stop" or g.rollbacks > cfg.max_rollbacks
        factor = cfg.lr_factor if cfg.action == "lower_lr" and not stop else 1.0
        lr = _set_lr(s, factor)
        action = "stopped" if stop else ("LR x %g" % factor if factor != 1.0 else "continued")
        event = {"step": s.global_step, "epoch": s.epoch, "reason": reason, "restored_step": g.best_step}
        event.update({"action": action, "lr": lr, "rollback": g.rollbacks})
        g.events.append(event)
        line = (
            f"collapse guard at step {s.global_step}: {reason}; restored the best checkpoint (step "
            f"{g.best_step}), {action}" + ("" if stop else f" at lr {lr:.3g}")
        )
        if last and cfg.action != "stop":
            line += " (the check after the run's last step: no step left to continue)"
        elif stop and cfg.action != "stop":
            line += f" (train.guard.max_rollbacks={cfg.max_rollbacks} reached)"
        self.log(line)
        base = row or {"epoch": s.epoch, "step": s.global_step, "phase": "guard"}  # the check's row, if it scored
        self.run.write_row({**base, "guard_event": line})
        self.run.write_json(EVENTS_FILE, g.events)
        self.guard_stopped = stop

    def _guard_diverged(self, exc: Exception) -> None:
        """A non-finite loss: act as on a drop when a best checkpoint exists, else re-raise ``exc``."""
        if not self.guard.active or self.guard.best_step is None:
            raise exc
        self._guard_act(str(exc).split(";")[0])


def _set_lr(state: Any, factor: float) -> float:
    """Multiply the schedule's base LRs by ``factor`` and set each group's LR for the current step."""
    sched, groups = state.scheduler, state.optimizer.param_groups
    if sched is None:
        for g in groups:
            g["lr"] *= factor
        return groups[0]["lr"]
    sched.base_lrs = [b * factor for b in sched.base_lrs]
    for g, base, fn in zip(groups, sched.base_lrs, sched.lr_lambdas):
        g["lr"] = base * fn(sched.last_epoch)
    return groups[0]["lr"]
