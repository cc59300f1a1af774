"""``e2mc.tune``: find which add-on and weights improve THIS checkpoint, without its test split.

Flow: search space (``tuning.space``) -> seeded stratified held-out part of the TRAIN split
(``tuning.scoring.holdout_split``) -> successive halving over probes (``tuning.halving``; each
probe a resumable ``continue`` run on the rest, ``tuning.probes``) scored on the held-out part
(kNN@20, linear probe) and with label-free metrics (RankMe, E2MC entropy, LiDAR, alpha-ReQ) ->
ranked table, chosen setting, Kendall tau of each label-free metric against held-out kNN@20
(``tune.json``, ``tune.md``, ``tune.html``) -> optionally ``confirm``: the chosen setting and
base-only (add-on none, same LR and epochs) with N training seeds on the full train split,
evaluated once on the test split, with paired 95% intervals (``e2mc.evaluation.compare``).

Example:
    >>> res = e2mc.tune(TuneSpec("start.safetensors", "cifar10", out="tune_out", budget=8))  # doctest: +SKIP
    >>> res["chosen"]["label"]  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import math
import os
import signal
import threading
import time
from pathlib import Path

from e2mc.errors import ConfigError, DataError, TrainingDiverged, TuneInterrupted
from e2mc.fileio import atomic_write_json, atomic_write_text
from e2mc.tuning import halving, power, scoring, seeds, select
from e2mc.tuning.markdown import to_markdown
from e2mc.tuning.outcomes import ensure_protocol
from e2mc.tuning.probes import STAGE, Stopped, failed_line, failed_text, read_json, run_jobs
from e2mc.tuning.space import SearchSpace, parse_space
from e2mc.tuning.spec import Plan, TuneSpec

__all__ = ["tune", "TuneSpec", "Plan", "to_markdown", "write_outputs", "default_workers"]

SCHEMA = 1


def default_workers() -> int:
    """One probe process per 2 cores (each with 2 torch threads): CPU training scales sub-linearly in threads."""
    return max(1, (os.cpu_count() or 1) // 2)


def _base_overrides(checkpoint, method, recipe, sets: dict, device, seed: int) -> dict:
    over = {"model.init": str(checkpoint), "train.seed": int(seed), "train.tensorboard": False}
    if method:
        over["method.name"] = method
    if device:
        over["train.device"] = device
    return {**over, **sets}


def _resolve_method(checkpoint, method, recipe) -> str | None:
    if method or recipe:
        return method
    from e2mc.models.checkpoints import checkpoint_method

    return checkpoint_method(str(checkpoint))


def _stoppable(fn):
    """``fn`` (``tune``) with SIGTERM/SIGINT turned into ONE ``TuneInterrupted`` at any stage: while a
    probe trains, the trainer's own handler saves its checkpoint and stops it; anywhere else (the
    split, scoring) the handler stops the work on the spot; files are written atomically and scores
    only once complete, so nothing finished is lost and calling ``fn`` again resumes."""

    @functools.wraps(fn)
    def wrapper(spec, log=print):
        old = {}

        def stop(signum, frame):  # noqa: ARG001
            raise Stopped(signal.Signals(signum).name)

        if threading.current_thread() is threading.main_thread():
            old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        STAGE["now"] = "preparing the tune"
        try:
            return fn(spec, log)
        except Stopped as exc:
            raise TuneInterrupted(
                f"tune stopped by {exc.signame} while {STAGE['now']}; the finished probes, their "
                f"checkpoints and scores are kept in {spec.out}",
                spec.out,
            ) from None
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    return wrapper


def tune(spec=None, dataset=None, *, log=print, **kwargs) -> dict:
    """Tune the continuation of ``spec.checkpoint`` on ``spec.dataset``; write ``out/tune.{json,md,html}``;
    return tune.json's dict.

    ``spec``: a :class:`TuneSpec`. The former call, ``tune(checkpoint, dataset, out=..., ...)`` with
    TuneSpec's fields as keywords, still works for one release (``DeprecationWarning``).

    SIGTERM/SIGINT at any stage raise :class:`~e2mc.errors.TuneInterrupted` (the CLI: one line, exit
    3); calling ``tune`` again with the same spec resumes (finished probes and scores are reused).
    """
    if not isinstance(spec, TuneSpec):
        import warnings

        try:
            spec = TuneSpec(spec, dataset, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"tune: {exc}; pass tune(TuneSpec(checkpoint, dataset, out=..., ...))") from None
        warnings.warn("tune(checkpoint, dataset, ...) is deprecated; pass tune(TuneSpec(...))", DeprecationWarning, 2)
    elif dataset is not None or kwargs:
        raise ConfigError("tune(spec) takes the TuneSpec alone; set the other values as its fields")
    return _tune(spec, log)


@_stoppable
def _tune(spec: TuneSpec, log) -> dict:
    from e2mc.train.run import RunLock

    t_start = time.perf_counter()
    plan, source = _check(spec)
    out = Path(spec.out)
    lock = RunLock.acquire(out, log)  # one tune per folder: a second process gets a clear error
    try:
        protocols = scoring.eval_protocols(plan.labels, plan.label_free)
        ev = {
            "protocols": list(protocols),
            "seeds": [spec.seed],
            "ks": [scoring.K],
            "device": spec.device,
            "batch_size": spec.eval_batch_size,
            "use_cache": False,
            "lidar_images": int(spec.lidar_images),
            "lidar_views": 8,
        }
        if spec.eval_precision == "bf16":
            ev["amp_dtype"] = "bf16"
        ensure_protocol()
        _split_and_schedule(spec, plan, source, out, ev, log)
        ev = {"dataset": str(plan.split), **ev, "lidar_images": min(int(spec.lidar_images), int(plan.n_hold))}
        log(
            f"e2mc tune: {len(plan.space.points)} probes, {len(plan.rungs)} rung(s) at "
            f"{', '.join(f'{r.epochs:.3g}' for r in plan.rungs)} epoch(s) ({', '.join(map(str, plan.steps))} steps "
            f"of {plan.batch}); budget {halving.cost(plan.rungs):.3g} of "
            f"{len(plan.space.points) * plan.space.epochs:.3g} epochs (full grid); select {spec.select}; held-out "
            f"{plan.n_hold} of {plan.n} train images, probes train on {plan.n_probe}"
        )
        start = _score_start(spec.checkpoint, ev, out, log)
        records, rung_log = _run_rungs(spec, plan, ev, out, log)
        last = rung_log[-1]
        addon_of = {p.label: p.addon for p in plan.space.points}
        order = [p.label for p in plan.space.points]
        seed_log, scores, pairs = _final_seeds(spec, plan, ev, out, last, log)
        choice = select.choose(scores, pairs, plan.ref, addon_of, order)
        if seed_log and choice["distinguishable"]:
            choice["verdict"] += f" (the worst of training seeds {', '.join(map(str, seed_log['seeds']))})"
        lost = [s for s, e in (seed_log or {}).get("per_seed", {}).items() if plan.ref in (e.get("failed") or {})]
        if lost:  # with base-only failed, no probe has an interval with that seed: the verdict says why
            choice["verdict"] += (
                f"; base-only ({plan.ref}) itself failed with training seed {', '.join(lost)}, so no probe could be "
                "compared with it there"
            )
        log(f"verdict: {choice['verdict']}")
        result = _assemble(spec, plan, records, rung_log, choice, start)
        result["final_seeds"] = seed_log
        if plan.power is not None:
            plan.power["realised"] = power.realised(last, plan.ref, int(plan.n_hold))
        if spec.confirm:
            from e2mc.tuning.confirm import run_confirm

            result["wall_seconds"] = round(time.perf_counter() - t_start, 1)
            write_outputs(out, result)  # the tune's result is kept whatever the confirmation meets

            STAGE["now"] = "confirming the chosen setting"
            by_label = {p.label: p for p in plan.space.points}
            result["confirm"] = run_confirm(
                out,
                spec.recipe,
                {**plan.base, "data.dataset": str(spec.dataset), "data.split": "train"},
                plan.space.points,
                by_label[result["confirm_arm"]],
                int(spec.confirm),
                plan.space.epochs if spec.confirm_epochs is None else float(spec.confirm_epochs),
                plan.batch,
                plan.n,
                str(spec.dataset),
                spec.device,
                spec.eval_batch_size,
                plan.workers,
                plan.threads,
                log,
            )
        result["wall_seconds"] = round(time.perf_counter() - t_start, 1)
        write_outputs(out, result)
        log(f"chosen: {result['chosen']['label']} ({spec.select}); wrote {out / 'tune.md'}")
        return result
    finally:
        if lock is not None:
            lock.release()


def _check(spec: TuneSpec) -> tuple[Plan, object]:
    """Every check that needs no lock (bad values fail before anything is written); the train split."""
    from e2mc.config import load_config
    from e2mc.data.datasets import build_dataset

    if not spec.out:
        raise ConfigError("tune needs an output folder: out=DIR (CLI: --out DIR)")
    rule = scoring.parse_select(spec.select)
    label_free = tuple(dict.fromkeys(spec.label_free))
    bad = [m for m in label_free if m not in scoring.LABEL_FREE]
    if bad:
        raise ConfigError(f"unknown label-free metric(s) {bad}; choose from {', '.join(scoring.LABEL_FREE)}")
    if rule != "heldout" and rule not in label_free:
        label_free += (rule,)
    sp = spec.space if isinstance(spec.space, SearchSpace) else parse_space(spec.space)
    if not os.path.exists(str(spec.checkpoint)) and ":" not in str(spec.checkpoint):
        raise DataError(f"checkpoint {spec.checkpoint} not found; give a checkpoint file (.pt/.pth/.safetensors)")
    workers = default_workers() if spec.workers is None else int(spec.workers)
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    threads = spec.threads
    if threads is None and workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
    # checked before any probe trains: a bad confirm setting must not surface after hours of tuning
    if int(spec.confirm) < 0:
        raise ConfigError(f"--confirm takes N >= 1 training seeds (0: no confirmation), got {spec.confirm}")
    ce = spec.confirm_epochs
    if ce is not None and not (math.isfinite(float(ce)) and float(ce) > 0):
        raise ConfigError(f"--confirm-epochs must be a positive number of epochs (e.g. 0.2), got {ce}")
    if spec.eval_precision not in ("fp32", "bf16"):
        raise ConfigError(f"eval_precision must be fp32 or bf16, got {spec.eval_precision!r}")
    method = _resolve_method(spec.checkpoint, spec.method, spec.recipe)
    sets = {**sp.sets, **(spec.sets or {})}
    base = _base_overrides(spec.checkpoint, method, spec.recipe, sets, spec.device, spec.seed)
    over = {**base, "mode": "continue", "data.dataset": str(spec.dataset)}
    cfg = load_config(spec.recipe, over)  # checks keys and values
    sp = sp.with_base_lr(cfg.optim.lr)  # lr: {relative: [...]}: multiples of the recipe's LR
    if spec.confirm_epochs is not None and not sp.epochs_given:  # the last rung is as long as the confirm runs
        sp = sp.with_epochs(float(spec.confirm_epochs))
    source = build_dataset(str(spec.dataset), "train", root=cfg.data.root or spec.root)
    labels = scoring.has_labels(source.targets)
    if not labels and rule == "heldout":
        raise DataError(
            f"{spec.dataset} has no labels and no label-free metric was chosen; use --select "
            f"label-free:<metric> ({', '.join(scoring.LABEL_FREE)})"
        )
    if spec.holdout is not None:  # before the power pilot trains anything
        scoring.check_holdout(len(source), int(spec.holdout), spec.train_images)
    power.check(spec.target_diff, spec.holdout_cap, spec.min_move)
    halving.schedule(len(sp.points), sp.epochs, spec.budget, spec.eta)  # a bad --budget: before the pilot
    plan = Plan(sp, rule, label_free, method, workers, threads, base, cfg.optim.batch_size, labels)
    return plan, source


def _split_and_schedule(spec: TuneSpec, plan: Plan, source, out: Path, ev: dict, log) -> None:
    """The power pilot, the held-out split file, the probes' data size and the halving schedule (in ``plan``)."""
    from e2mc.data.datasets import build_dataset

    plan.n = len(source)
    plan.rungs = halving.schedule(len(plan.space.points), plan.space.epochs, spec.budget, spec.eta)
    plan.ref = select.reference_label(plan.space.points)
    if plan.labels and plan.rule == "heldout":
        STAGE["now"] = "measuring the detection power (pilot)"
        ref_over = next((p.overrides for p in plan.space.points if p.label == plan.ref), {"addon.name": "none"})
        plan.power = power.pilot(spec, plan, source, plan.rungs[0].epochs, ev, ref_over, out, log)
        plan.n_hold = plan.power["held_out"]
        log(power.describe(plan.power))
        longer = halving.lengthen_first(plan.rungs, len(plan.space.points), plan.power["first_epochs"], spec.eta)
        plan.power["first_rung"] = power.first_rung_note(plan.power, longer)
        if len(longer) < len(plan.rungs):
            log(
                f"{plan.power['first_rung']}; {len(longer)} rung(s), {halving.cost(longer):.3g} epochs of probe training"
                + (
                    f", over --budget {spec.budget}"
                    if isinstance(spec.budget, (int, float)) and halving.cost(longer) > spec.budget
                    else ""
                )
            )
            plan.rungs = longer
    else:
        plan.n_hold = spec.holdout if spec.holdout is not None else min(5000, max(scoring.K, round(0.1 * plan.n)))
    # the pilot's held-out part is the tune's when it is as large (the cap): the same file, so the
    # pilot's base-only probes are the reference probe's twins (``probes.adopt``); a tune folder
    # begun by an older e2mc keeps its own split.json
    same = plan.power is not None and plan.n_hold == plan.power["pilot_images"] and not (out / "split.json").exists()
    plan.split = scoring.holdout_split(
        out / "pilot" / "split.json" if same else out / "split.json",
        str(spec.dataset),
        source.targets,
        int(plan.n_hold),
        spec.seed,
        spec.train_images,
        need_labels=plan.rule == "heldout",
    )
    plan.n_probe = len(build_dataset(str(plan.split), "train"))
    plan.bpe = plan.n_probe // plan.batch
    if plan.bpe < 1:
        raise ConfigError(
            f"the probes' training part has {plan.n_probe} images, fewer than one batch of {plan.batch}; lower "
            "optim.batch_size (--set optim.batch_size=...) or use more training images"
        )
    plan.steps = [max(1, round(r.epochs * plan.bpe)) for r in plan.rungs]


def _probe_over(plan: Plan) -> dict:
    """The overrides every probe shares (its point's are added)."""
    return {
        **plan.base,
        "data.dataset": str(plan.split),
        "data.split": "train",
        "train.epochs": math.ceil(plan.space.epochs),
        "train.checkpoint_every_epochs": 1000,
    }


def _final_seeds(spec: TuneSpec, plan: Plan, ev: dict, out: Path, last: dict, log) -> tuple:
    """The leaders and base-only with the extra training seeds (``tuning.seeds``); ``(log or None,
    scores, paired intervals)`` the choice reads (worst case over seeds when they ran)."""
    if plan.rule != "heldout" or int(spec.final_seeds) < 2 or not last.get("paired"):
        return None, last["scores"], last.get("paired")
    STAGE["now"] = "training the leaders with more seeds"
    labs = seeds.leaders(last, plan.ref, spec.eta)
    extra = list(range(spec.seed + 1, spec.seed + int(spec.final_seeds)))
    by_label = {p.label: p for p in plan.space.points}
    order = [p.label for p in plan.space.points]
    recs = seeds.run_seeds(labs, by_label, _probe_over(plan), last["steps"], extra, ev, spec, plan, out, log)

    def rule_score(m):
        return scoring.score(m, plan.rule)

    per_seed = {str(s): seeds.seed_rung(r, last["steps"], rule_score, plan.ref, order) for s, r in recs.items()}
    first = {lab: last["paired"][lab] for lab in labs}
    pairs = seeds.worst_case([first] + [e["paired"] for e in per_seed.values()])
    seed_log = {
        "seeds": [spec.seed, *extra],
        "probes": labs,
        "steps": last["steps"],
        "per_seed": per_seed,
        "trained_epochs": len(labs) * len(extra) * last["steps"] / plan.bpe,
        "train_seconds": round(sum(rec["train_seconds"] for r in recs.values() for rec in r.values()), 1),
    }
    return seed_log, {lab: last["scores"][lab] for lab in labs}, pairs


def _run_rungs(spec: TuneSpec, plan: Plan, ev: dict, out: Path, log) -> tuple[dict, list]:
    """Train and score the probes rung by rung; the records per probe and the rungs' log."""
    probe_over = _probe_over(plan)
    by_label = {p.label: p for p in plan.space.points}
    order = [p.label for p in plan.space.points]
    alive = list(order)
    records: dict[str, dict] = {}
    rung_log = []
    for k, st in enumerate(plan.steps):
        jobs = [
            {
                "label": lab,
                "dir": str(out / "probes" / lab),
                "source": spec.recipe,
                "overrides": {**probe_over, **by_label[lab].overrides},
                "twin": power.twin(out, {**probe_over, **by_label[lab].overrides}),
                "steps": st,
                "eval": ev,
                "threads": plan.threads,
            }
            for lab in alive
        ]
        for rec in run_jobs(jobs, plan.workers, log):
            records[rec["label"]] = rec
        failed = {lab: records[lab]["failed"] for lab in alive if records[lab].get("failed")}
        for lab, f in failed.items():
            log(failed_line(lab, f))
        if plan.ref in failed:
            raise reference_failed(plan.ref, failed[plan.ref], out)
        ok = [lab for lab in alive if lab not in failed]  # a failed probe gets no score and never advances
        scores = {lab: scoring.score(records[lab]["scores"][str(st)], plan.rule) for lab in ok}
        entry = {"rung": k, "epochs": st / plan.bpe, "steps": st, "probes": list(alive), "scores": scores}
        if failed:
            entry["failed"] = failed
        outcomes = {lab: (records[lab].get("outcomes") or {}).get(str(st)) for lab in ok}
        linear = {lab: (records[lab].get("linear_outcomes") or {}).get(str(st)) for lab in ok}
        if plan.rule == "heldout" and all(outcomes.values()):
            entry["leader"], entry["paired"] = select.rung_pairs(outcomes, scores, plan.ref, order, linear)
        rung_log.append(entry)
        if k + 1 < len(plan.rungs):
            alive = select.survivors(scores, plan.rungs[k + 1].probes, order, plan.ref, entry.get("paired"))
            log(f"rung {k}: {', '.join(alive)} advance")
    return records, rung_log


def reference_failed(ref: str, failed: dict, out: Path) -> TrainingDiverged:
    """The one-line error of a base-only reference probe that diverged or was stopped by the guard."""
    return TrainingDiverged(
        f"the base-only reference probe {ref} {failed_text(failed)} ({failed['reason'].split(': ', 1)[-1]}), so "
        "no probe can be paired with it; remove that LR from the space (or lower lr) and rerun: the other "
        f"probes' files are kept in {out / 'probes'}"
    )


def _score_start(checkpoint, ev: dict, out: Path, log) -> dict:
    """The start checkpoint's metrics on the held-out part (memoised in ``out/start.json``)."""
    from e2mc.evaluation.api import evaluate, evaluation_settings

    memo = read_json(out / "start.json")
    if memo is not None and memo.get("eval") == ev:
        return memo["metrics"]
    log(f"scoring the start {checkpoint} on the held-out part")
    STAGE["now"] = "scoring the start checkpoint"
    kw = dict(ev)
    dataset, protocols = kw.pop("dataset"), kw.pop("protocols")
    t0 = time.perf_counter()
    res = evaluate(str(checkpoint), dataset, tuple(protocols), evaluation_settings(**kw))
    metrics = scoring.probe_metrics(res)
    if scoring.probe_outcomes(res) is not None:  # the start's per-image outcomes, for a paired look
        metrics["outcomes"] = scoring.probe_outcomes(res)
    start = {"eval": ev, "metrics": metrics, "seconds": round(time.perf_counter() - t0, 2)}
    atomic_write_json(out / "start.json", start, indent=1, parents=True)
    return metrics


def _assemble(spec: TuneSpec, plan: Plan, records: dict, rung_log: list, choice: dict, start: dict) -> dict:
    """tune.json's dict (everything but ``confirm`` and the wall time)."""
    sp, steps, bpe, order = plan.space, plan.steps, plan.bpe, [p.label for p in plan.space.points]
    by_label = {p.label: p for p in sp.points}
    reached = {lab: max(i for i, r in enumerate(rung_log) if lab in r["probes"]) for lab in order}
    ranked: list[str] = []
    for k in reversed(range(len(rung_log))):  # the last rung first, each rung by its score
        here = {lab: rung_log[k]["scores"][lab] for lab in order if reached[lab] == k and lab in rung_log[k]["scores"]}
        ranked += halving.advance(here, len(here), order)
    failed = [
        {
            "label": lab,
            "addon": by_label[lab].addon,
            "overrides": by_label[lab].overrides,
            "rung": reached[lab],
            "epochs": records[lab]["steps"] / bpe,
            "steps": records[lab]["steps"],
            "failed": records[lab]["failed"],
            "metrics_by_steps": records[lab]["scores"],
            "train_seconds": records[lab]["train_seconds"],
            "eval_seconds": records[lab]["eval_seconds"],
        }
        for lab in order
        if records[lab].get("failed")
    ]
    probes = []
    for lab in ranked:
        rec = records[lab]
        k = reached[lab]
        last = rec["scores"][str(steps[k])]
        probes.append(
            {
                "label": lab,
                "addon": by_label[lab].addon,
                "overrides": by_label[lab].overrides,
                "rung": k,
                "epochs": steps[k] / bpe,
                "steps": steps[k],
                "metrics": last,
                "score": rung_log[k]["scores"][lab],
                "metrics_by_steps": rec["scores"],
                "train_seconds": rec["train_seconds"],
                "eval_seconds": rec["eval_seconds"],
            }
        )
    for i, p in enumerate(probes):
        p["rank"] = i + 1
    chosen_label = choice["label"]
    chosen = next(p for p in probes if p["label"] == chosen_label)
    base_only = [p for p in probes if p["addon"] == "none"]
    rung0 = {lab: records[lab]["scores"][str(steps[0])] for lab in order if str(steps[0]) in records[lab]["scores"]}
    tau = scoring.kendall(rung0, rules=plan.label_free) if plan.labels else {}
    trained_epochs = sum(p["steps"] for p in probes + failed) / bpe  # each probe's steps, counted once
    full = len(order) * sp.epochs
    confirm_arm = chosen_label
    note = None
    if chosen["addon"] == "none":
        note = (
            "no add-on is distinguishable from base-only on the held-out images"
            if choice["distinguishable"] is False
            else "no add-on scored above base-only on the selection rule: the tune found nothing that helps"
        )
        best_addon = next((p for p in probes if p["addon"] != "none"), None)
        confirm_arm = best_addon["label"] if best_addon else chosen_label
    return {
        "schema": SCHEMA,
        "checkpoint": str(spec.checkpoint),
        "dataset": str(spec.dataset),
        "recipe": spec.recipe,
        "method": plan.method,
        "select": spec.select,
        "rule": plan.rule,
        "space": sp.to_dict(),
        "budget": spec.budget,
        "eta": spec.eta,
        "heldout": {
            "split_file": str(plan.split),
            "train_images": plan.n,
            "held_out": int(plan.n_hold),
            "probe_train": plan.n_probe,
            "source_split": "train",
            "note": "the dataset's test split is never read while tuning",
        },
        "schedule": [
            {"rung": r.index, "epochs": r.epochs, "probes": r.probes, "steps": s} for r, s in zip(plan.rungs, steps)
        ],
        "batches_per_epoch": bpe,
        "rungs": rung_log,
        "probes": probes,
        "failed": failed,
        "chosen": chosen,
        "verdict": choice["verdict"],
        "distinguishable": choice["distinguishable"],
        "power": plan.power,
        "reference": plan.ref,
        "note": note,
        "base_only": base_only[0] if base_only else None,
        "start": start,
        "kendall_tau": tau,
        "kendall_rung": 0,
        "confirm_arm": confirm_arm,
        "workers": plan.workers,
        "cost": {
            "planned_epochs": halving.cost(plan.rungs),
            "trained_epochs": trained_epochs,
            "full_grid_epochs": full,
            "fraction_of_full_grid": trained_epochs / full,
            "probe_train_seconds": round(sum(p["train_seconds"] for p in probes + failed), 1),
            "probe_eval_seconds": round(sum(p["eval_seconds"] for p in probes + failed), 1),
        },
    }


def write_outputs(out: Path, res: dict) -> None:
    """tune.json, tune.md, tune.html (atomic; the html opens with the verdict and the paired plot)."""
    from e2mc.report.tune import paired_figure_png, write_tune_html
    from e2mc.tuning.markdown import verdict_line

    atomic_write_json(out / "tune.json", res, indent=1, parents=True)
    md = to_markdown(res)
    atomic_write_text(out / "tune.md", md)
    mde = (res.get("power") or {}).get("mde")
    fig = paired_figure_png(res["rungs"], res.get("reference"), mde)
    write_tune_html(out / "tune.html", md, title="e2mc tune", headline=verdict_line(res), figure=fig)
