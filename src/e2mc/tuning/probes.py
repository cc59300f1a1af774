"""Probes: real, resumable ``continue`` runs, trained up to a step count and scored there.

A probe lives in ``OUT/probes/<label>/``: an e2mc run folder plus ``probe.json`` (its overrides,
the steps trained, seconds spent, and its held-out/label-free metrics per step count). Asked for
``steps``, a probe that has them already is skipped; one with ``checkpoints/last.pt`` is RESUMED
(``out.resume``) up to ``train.max_steps = steps`` (successive halving's next rung adds epochs
to the same run, it does not retrain); one without a checkpoint starts clean. Scores are stored
per step count (with labels also the per-image held-out kNN and linear-probe outcomes, ``outcomes`` and
``linear_outcomes``), so a rerun of ``e2mc tune`` re-trains and re-scores nothing (a probe scored by an
older e2mc, without linear outcomes, keeps its scores: ``scoring.same_eval``).

A probe whose training diverges (the trainer's ``TrainingDiverged``: a non-finite loss or state;
or, found while scoring it, NaN/inf features or features beyond float16's range) or that the
collapse guard stopped (``trainer.guard_stopped``) is a result, not an error: its
``probe.json`` gets ``"failed": {"step", "reason", "kind": "diverged" | "guard_stopped"}``, it is
never trained or scored again (a rerun returns the record as it is) and the tune leaves it out of
the ranking (:func:`failed_line`). SIGTERM/SIGINT still raise :class:`Stopped`.

A new probe whose job names a ``twin`` (a finished power-pilot probe with the same overrides: the
pilot's base-only runs are the reference probe and its second seed) starts as a copy of it
(:func:`adopt`): its run files are linked or copied and it resumes from there, so that training is
done, and counted, once (in the pilot).

``run_jobs`` runs a rung's probes one after another in this process (``workers=1``) or in
``workers`` spawned processes, each with ``threads`` torch threads.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from e2mc.errors import ConfigError, TrainingDiverged
from e2mc.fileio import atomic_write_json, move_dir_into_place


def read_json(path, default=None):
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else default


STAGE = {"now": "starting"}  # what this process is doing, for the message of a stopped tune


class Stopped(BaseException):
    """SIGTERM/SIGINT stopped the tune (a ``BaseException``: no ``except Exception`` takes it for a
    failure); ``tuning.api.tune`` turns it into one ``TuneInterrupted`` message."""

    def __init__(self, signame: str = "a signal"):
        super().__init__(signame)
        self.signame = signame


def _train(source, overrides: dict, run_dir: Path) -> dict | None:
    """Train the probe's run up to ``train.max_steps``; None, or its ``failed`` entry when the
    training diverged or the collapse guard stopped it."""
    from e2mc.train.api import build_config
    from e2mc.train.loop import Trainer

    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    cfg = build_config(
        "continue", source, **overrides, out__dir=str(run_dir), out__resume=resume, out__overwrite=not resume
    )
    trainer = Trainer(cfg)
    trainer.resume_hint = "the probe's checkpoint is saved"  # the tune says how to resume, once
    try:
        trainer.fit()
    except TrainingDiverged as exc:
        return diverged_entry(exc)
    if trainer.stop_requested:  # the trainer's own SIGTERM/SIGINT handler saved and stopped
        raise Stopped(trainer.stop_signal or "a signal")
    for p in (run_dir / "checkpoints").glob("epoch_*.pt"):  # last.pt is what rungs resume from
        p.unlink()
    if trainer.guard_stopped:
        event = (trainer.guard.events or [{}])[-1]
        step = event.get("step", trainer.state.global_step)
        reason = event.get("reason") or "the guard score dropped"
        return {"step": step, "reason": f"collapse guard stopped it at step {step}: {reason}", "kind": "guard_stopped"}
    return None


def _link_or_copy(src, dst):
    """A hard link, or a copy where links are not possible. For checkpoints only: they are replaced,
    never written in place, so the twin never changes (``metrics.csv`` is appended to: copied)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def adopt(job: dict) -> bool:
    """Start the new probe ``job`` as a copy of its ``twin`` (see the module docstring); True when it did.

    Only a twin that finished, did not fail, holds the same overrides and is not past ``job["steps"]``
    is adopted, and only into a folder with no probe and no run files; its scores are not (the
    pilot scores with fewer metrics), so the probe is scored as any other."""
    from e2mc.train.run import run_files

    src = Path(job["twin"]) if job.get("twin") else None
    dst = Path(job["dir"])
    if src is None or (dst / "probe.json").exists() or (dst.is_dir() and run_files(dst)):
        return False
    rec = read_json(src / "probe.json")
    if (
        rec is None
        or rec.get("failed")
        or rec["overrides"] != job["overrides"]
        or not 0 < int(rec["steps"]) <= int(job["steps"])
        or not (src / "checkpoints" / "last.pt").is_file()
    ):
        return False
    tmp = dst.with_name(dst.name + ".adopting")
    shutil.rmtree(tmp, ignore_errors=True)
    keep = [f for f in run_files(src) if f not in ("tb", "guard_events.json")]
    tmp.mkdir(parents=True)
    for f in keep:
        if f == "checkpoints":
            shutil.copytree(src / f, tmp / f, copy_function=_link_or_copy)
        elif (src / f).is_dir():
            shutil.copytree(src / f, tmp / f)
        else:
            shutil.copy2(src / f, tmp / f)
    new = {
        "label": job["label"],
        "overrides": job["overrides"],
        "steps": int(rec["steps"]),
        "train_seconds": 0.0,  # counted in the pilot's
        "eval_seconds": 0.0,
        "scores": {},
        "from_pilot": {"dir": str(src), "steps": int(rec["steps"]), "train_seconds": rec["train_seconds"]},
    }
    atomic_write_json(tmp / "probe.json", new, indent=1)
    if dst.is_dir():
        shutil.rmtree(dst)  # no probe and no run files: at most an empty attempt's folder
    move_dir_into_place(tmp, dst)
    return True


def diverged_entry(exc: TrainingDiverged) -> dict:
    """The ``failed`` entry of a ``TrainingDiverged``: the step and what was not finite (the trainer
    sets both on the error; another's message is kept, shortened)."""
    if exc.step is None or exc.term is None:
        return {"step": None, "reason": str(exc).split(";")[0].strip()[:200], "kind": "diverged"}
    return {"step": exc.step, "reason": f"diverged at step {exc.step}: {exc.term} is not finite", "kind": "diverged"}


def failed_text(failed: dict) -> str:
    """A failed probe's short state for a table cell: "diverged at step 3", "collapse guard stopped it at step 40"."""
    at = "" if failed.get("step") is None else f" at step {failed['step']}"
    return f"collapse guard stopped it{at}" if failed["kind"] == "guard_stopped" else f"diverged{at}"


def failed_line(label: str, failed: dict) -> str:
    """The tune's one log line for a failed probe."""
    detail = failed["reason"].split(": ", 1)[-1]
    if failed["kind"] == "guard_stopped":
        what = (
            f"was stopped by the collapse guard{'' if failed.get('step') is None else ' at step %d' % failed['step']}"
        )
    else:
        what = "diverged" + ("" if failed.get("step") is None else f" at step {failed['step']}")
    return f"probe {label} {what} ({detail}); left out of the ranking"


def run_probe(job: dict) -> dict:
    """Train (or resume, or skip) one probe to ``job["steps"]`` and score it there; return its record.

    ``job``: label, dir, source (recipe/config), overrides (without max_steps / out), steps,
    eval (``evaluate`` keyword arguments incl. dataset and protocols; None: train only), threads.
    """
    if job.get("threads"):
        import torch

        torch.set_num_threads(int(job["threads"]))
    run_dir = Path(job["dir"])
    marker = run_dir / "probe.json"
    adopt(job)
    rec = read_json(marker)
    if rec is not None and rec["overrides"] != job["overrides"]:
        raise ConfigError(f"{run_dir} holds a probe with other settings ({marker}); use another --out")
    rec = rec or {
        "label": job["label"],
        "overrides": job["overrides"],
        "steps": 0,
        "train_seconds": 0.0,
        "eval_seconds": 0.0,
        "scores": {},
    }
    if job.get("eval"):
        from e2mc.tuning.scoring import same_eval

        if not same_eval(rec.get("eval"), job["eval"]):
            raise ConfigError(
                f"probe {job['label']} in {run_dir} was scored with other evaluation settings "
                f"({rec['eval']}); rerun with the same flags (--select's metrics, --eval-precision, "
                "--lidar-images) or use another --out"
            )
        rec["eval"] = job["eval"]
    if rec.get("failed"):  # a diverged or guard-stopped probe is a result: never trained again
        if str(job["steps"]) in rec["scores"]:  # an earlier rung's score, from before it failed: it stands
            return {**{k: v for k, v in rec.items() if k != "failed"}, "trained_now": 0}
        return {**rec, "trained_now": 0}
    steps = int(job["steps"])
    trained_now = 0
    if rec["steps"] > steps and str(steps) not in rec["scores"]:
        raise ConfigError(
            f"probe {job['label']} in {run_dir} is trained past step {steps} without a score there "
            "(another schedule used this folder); use another --out"
        )
    if rec["steps"] < steps:
        STAGE["now"] = f"training probe {job['label']} up to step {steps}"
        t0 = time.perf_counter()
        before = rec["steps"]
        try:
            failed = _train(job["source"], {**job["overrides"], "train.max_steps": steps}, run_dir)
        finally:
            rec["train_seconds"] = round(rec["train_seconds"] + time.perf_counter() - t0, 2)
            atomic_write_json(marker, rec, indent=1, parents=True)
        if failed is not None:  # the steps it trained count in the tune's cost
            rec["steps"] = steps if failed["step"] is None else max(before, min(steps, int(failed["step"])))
            rec["failed"] = failed
            atomic_write_json(marker, rec, indent=1, parents=True)
            return {**rec, "trained_now": rec["steps"] - before}
        rec["steps"] = steps
        trained_now = steps - before
        atomic_write_json(marker, rec, indent=1, parents=True)
    if job.get("eval") and str(steps) not in rec["scores"]:
        from e2mc.evaluation.api import evaluate, evaluation_settings
        from e2mc.evaluation.features import BadFeatures
        from e2mc.tuning.outcomes import ensure_protocol
        from e2mc.tuning.scoring import LINEAR_OUTCOMES, probe_metrics, probe_outcomes

        ensure_protocol()  # a spawned worker registers the tune's protocol itself

        STAGE["now"] = f"scoring probe {job['label']} at step {steps}"
        kw = dict(job["eval"])
        dataset, protocols = kw.pop("dataset"), kw.pop("protocols")
        t0 = time.perf_counter()
        try:
            res = evaluate(
                str(run_dir / "checkpoints" / "last.pt"), dataset, tuple(protocols), evaluation_settings(**kw)
            )
        except BadFeatures as exc:  # finite weights, but NaN/inf or overflowing features: diverged all the same
            detail = str(exc).split(";")[0].removeprefix("feature extraction: ")
            rec["failed"] = {"step": steps, "reason": f"diverged by step {steps}: {detail}", "kind": "diverged"}
            rec["eval_seconds"] = round(rec["eval_seconds"] + time.perf_counter() - t0, 2)
            atomic_write_json(marker, rec, indent=1, parents=True)
            return {**rec, "trained_now": trained_now}
        dt = time.perf_counter() - t0
        rec["scores"][str(steps)] = probe_metrics(res)
        if probe_outcomes(res) is not None:
            rec.setdefault("outcomes", {})[str(steps)] = probe_outcomes(res)
        if probe_outcomes(res, LINEAR_OUTCOMES) is not None:
            rec.setdefault("linear_outcomes", {})[str(steps)] = probe_outcomes(res, LINEAR_OUTCOMES)
        rec["eval_seconds"] = round(rec["eval_seconds"] + dt, 2)
        atomic_write_json(marker, rec, indent=1, parents=True)
    return {**rec, "trained_now": trained_now}


def run_jobs(jobs: list[dict], workers: int = 1, log=print) -> list[dict]:
    """Run the probes (in order with ``workers=1``; else in spawned processes); their records in job order."""
    from e2mc.workers import run_in_processes

    if workers <= 1 or len(jobs) <= 1:
        out = []
        for job in jobs:
            log(f"probe {job['label']}: up to step {job['steps']}")
            out.append(run_probe(job))
        return out
    log(f"{len(jobs)} probes in {min(workers, len(jobs))} processes: {', '.join(j['label'] for j in jobs)}")
    STAGE["now"] = f"running probes {', '.join(j['label'] for j in jobs)} in {min(workers, len(jobs))} processes"
    return run_in_processes(run_probe, jobs, workers, label=lambda job: f"probe {job['label']}")
