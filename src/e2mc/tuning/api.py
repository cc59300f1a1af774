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
    >>> res = e2mc.tune("start.safetensors", "cifar10", out="tune_out", budget=8)  # doctest: +SKIP
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
from typing import Sequence

from e2mc.errors import ConfigError, DataError, TuneInterrupted
from e2mc.fileio import atomic_write_text
from e2mc.tuning import halving, scoring
from e2mc.tuning.probes import STAGE, Stopped, read_json, run_jobs, write_json
from e2mc.tuning.space import SearchSpace, parse_space

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
    def wrapper(*args, **kw):
        old = {}

        def stop(signum, frame):  # noqa: ARG001
            raise Stopped(signal.Signals(signum).name)

        if threading.current_thread() is threading.main_thread():
            old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        STAGE["now"] = "preparing the tune"
        try:
            return fn(*args, **kw)
        except Stopped as exc:
            raise TuneInterrupted(
                f"tune stopped by {exc.signame} while {STAGE['now']}; the finished probes, their "
                f"checkpoints and scores are kept in {kw.get('out')}",
                kw.get("out"),
            ) from None
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    return wrapper


@_stoppable
def tune(
    checkpoint,
    dataset,
    *,
    out,
    space=None,
    budget: float | str | None = None,
    select: str = "heldout",
    workers: int | None = None,
    threads: int | None = None,
    confirm: int = 0,
    recipe: str | None = None,
    method: str | None = None,
    holdout: int | None = None,
    train_images: int | None = None,
    seed: int = 0,
    eta: int = 3,
    label_free: Sequence[str] = scoring.LABEL_FREE,
    sets: dict | None = None,
    device: str | None = None,
    confirm_epochs: float | None = None,
    root: str | None = None,
    eval_batch_size: int = 256,
    eval_precision: str = "fp32",
    lidar_images: int = 500,
    log=print,
) -> dict:
    """Tune the continuation of ``checkpoint`` on ``dataset``; write ``out/tune.{json,md,html}``; return tune.json's dict.

    SIGTERM/SIGINT at any stage raise :class:`~e2mc.errors.TuneInterrupted` (the CLI: one line, exit
    3); calling ``tune`` again with the same arguments resumes (finished probes and scores are reused).

    Args:
        space: a :class:`SearchSpace`, a YAML path, a dict, or None (``tuning.space.DEFAULT_SPACE``).
        budget: epochs of training data for all probes together (None: the cheapest schedule, the
            most rungs; ``"full"``: the full grid, every probe to the space's epochs).
        select: ``"heldout"`` (kNN@20 on the held-out part) or ``"label-free:<metric>"``.
        workers: probe processes at once (None: one per 2 cores); ``threads`` torch threads each.
        confirm: N > 0: also run the chosen setting and base-only with N training seeds on the full
            train split and evaluate them once on the test split (paired 95% intervals).
        recipe: the continue recipe/config every probe starts from (None: e2mc's defaults).
        holdout: held-out TRAIN images (None: 10% of the train split, at most 5,000).
        train_images: the probes train on this many of the rest (stratified, seeded; None: all).
        sets: extra config overrides for every probe and confirm run.
        eval_precision: feature extraction of the probes' scoring, ``"fp32"`` or ``"bf16"`` (about
            2x faster on CPU; the confirmation always extracts in the evaluate default).
        lidar_images: LiDAR's surrogate classes (held-out images, each augmented 8 times).
    """
    from e2mc.config import load_config
    from e2mc.data.datasets import build_dataset
    from e2mc.train.run import RunLock

    t_start = time.perf_counter()
    if not out:
        raise ConfigError("tune needs an output folder: out=DIR (CLI: --out DIR)")
    out = Path(out)
    rule = scoring.parse_select(select)
    label_free = tuple(dict.fromkeys(label_free))
    bad = [m for m in label_free if m not in scoring.LABEL_FREE]
    if bad:
        raise ConfigError(f"unknown label-free metric(s) {bad}; choose from {', '.join(scoring.LABEL_FREE)}")
    if rule != "heldout" and rule not in label_free:
        label_free += (rule,)
    sp = space if isinstance(space, SearchSpace) else parse_space(space)
    if not os.path.exists(str(checkpoint)) and ":" not in str(checkpoint):
        raise DataError(f"checkpoint {checkpoint} not found; give a checkpoint file (.pt/.pth/.safetensors)")
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if threads is None and workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
    # checked before any probe trains: a bad confirm setting must not surface after hours of tuning
    if int(confirm) < 0:
        raise ConfigError(f"--confirm takes N >= 1 training seeds (0: no confirmation), got {confirm}")
    if confirm_epochs is not None and not (math.isfinite(float(confirm_epochs)) and float(confirm_epochs) > 0):
        raise ConfigError(f"--confirm-epochs must be a positive number of epochs (e.g. 0.2), got {confirm_epochs}")
    method = _resolve_method(checkpoint, method, recipe)
    sets = {**sp.sets, **(sets or {})}
    base = _base_overrides(checkpoint, method, recipe, sets, device, seed)
    cfg = load_config(recipe, {**base, "mode": "continue", "data.dataset": str(dataset)})  # checks keys and values
    batch = cfg.optim.batch_size
    source = build_dataset(str(dataset), "train", root=cfg.data.root or root)
    labels = scoring.has_labels(source.targets)
    if not labels and rule == "heldout":
        raise DataError(
            f"{dataset} has no labels and no label-free metric was chosen; use --select "
            f"label-free:<metric> ({', '.join(scoring.LABEL_FREE)})"
        )
    lock = RunLock.acquire(out, log)  # one tune per folder: a second process gets a clear error
    try:
        n = len(source)
        n_hold = holdout if holdout is not None else min(5000, max(scoring.K, round(0.1 * n)))
        split = scoring.holdout_split(
            out / "split.json",
            str(dataset),
            source.targets,
            int(n_hold),
            seed,
            train_images,
            need_labels=rule == "heldout",
        )
        n_probe = len(build_dataset(str(split), "train"))
        bpe = n_probe // batch
        if bpe < 1:
            raise ConfigError(
                f"the probes' training part has {n_probe} images, fewer than one batch of {batch}; lower "
                "optim.batch_size (--set optim.batch_size=...) or use more training images"
            )
        points = sp.points
        rungs = halving.schedule(len(points), sp.epochs, budget, eta)
        steps = [max(1, round(r.epochs * bpe)) for r in rungs]
        protocols = scoring.eval_protocols(labels, label_free)
        ev = {
            "dataset": str(split),
            "protocols": list(protocols),
            "seeds": [seed],
            "ks": [scoring.K],
            "device": device,
            "batch_size": eval_batch_size,
            "use_cache": False,
            "lidar_images": min(int(lidar_images), int(n_hold)),
            "lidar_views": 8,
        }
        if eval_precision not in ("fp32", "bf16"):
            raise ConfigError(f"eval_precision must be fp32 or bf16, got {eval_precision!r}")
        if eval_precision == "bf16":
            ev["amp_dtype"] = "bf16"
        probe_over = {
            **base,
            "data.dataset": str(split),
            "data.split": "train",
            "train.epochs": math.ceil(sp.epochs),
            "train.checkpoint_every_epochs": 1000,
        }
        log(
            f"e2mc tune: {len(points)} probes, {len(rungs)} rung(s) at {', '.join(f'{r.epochs:.3g}' for r in rungs)} "
            f"epoch(s) ({', '.join(map(str, steps))} steps of {batch}); budget {halving.cost(rungs):.3g} of "
            f"{len(points) * sp.epochs:.3g} epochs (full grid); select {select}; held-out {n_hold} of {n} train images, "
            f"probes train on {n_probe}"
        )
        start = _score_start(checkpoint, ev, out, log)

        by_label = {p.label: p for p in points}
        order = [p.label for p in points]
        alive = list(order)
        records: dict[str, dict] = {}
        rung_log = []
        for k, st in enumerate(steps):
            jobs = [
                {
                    "label": lab,
                    "dir": str(out / "probes" / lab),
                    "source": recipe,
                    "overrides": {**probe_over, **by_label[lab].overrides},
                    "steps": st,
                    "eval": ev,
                    "threads": threads,
                }
                for lab in alive
            ]
            for rec in run_jobs(jobs, workers, log):
                records[rec["label"]] = rec
            scores = {lab: scoring.score(records[lab]["scores"][str(st)], rule) for lab in alive}
            rung_log.append({"rung": k, "epochs": st / bpe, "steps": st, "probes": list(alive), "scores": scores})
            if k + 1 < len(rungs):
                alive = halving.advance(scores, rungs[k + 1].probes, order)
                log(f"rung {k}: {', '.join(alive)} advance")
        final = rung_log[-1]
        chosen_label = halving.advance(final["scores"], 1, order)[0]
        result = _assemble(
            out,
            checkpoint,
            dataset,
            sp,
            select,
            rule,
            budget,
            eta,
            rungs,
            steps,
            bpe,
            n,
            n_hold,
            n_probe,
            split,
            by_label,
            order,
            records,
            rung_log,
            chosen_label,
            start,
            labels,
            label_free,
            recipe,
            method,
            t_start,
            workers,
        )
        if confirm:
            from e2mc.tuning.confirm import run_confirm

            STAGE["now"] = "confirming the chosen setting"
            result["confirm"] = run_confirm(
                out,
                recipe,
                {**base, "data.dataset": str(dataset), "data.split": "train"},
                points,
                by_label[result["confirm_arm"]],
                int(confirm),
                sp.epochs if confirm_epochs is None else float(confirm_epochs),
                batch,
                n,
                str(dataset),
                device,
                eval_batch_size,
                workers,
                threads,
                log,
            )
        result["wall_seconds"] = round(time.perf_counter() - t_start, 1)
        write_outputs(out, result)
        log(f"chosen: {result['chosen']['label']} ({select}); wrote {out / 'tune.md'}")
        return result
    finally:
        if lock is not None:
            lock.release()


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
    write_json(out / "start.json", {"eval": ev, "metrics": metrics, "seconds": round(time.perf_counter() - t0, 2)})
    return metrics


def _assemble(
    out,
    checkpoint,
    dataset,
    sp,
    select,
    rule,
    budget,
    eta,
    rungs,
    steps,
    bpe,
    n,
    n_hold,
    n_probe,
    split,
    by_label,
    order,
    records,
    rung_log,
    chosen_label,
    start,
    labels,
    label_free,
    recipe,
    method,
    t_start,
    workers,
) -> dict:
    """tune.json's dict (everything but ``confirm`` and the wall time)."""
    reached = {lab: max(i for i, r in enumerate(rung_log) if lab in r["probes"]) for lab in order}
    ranked: list[str] = []
    for k in reversed(range(len(rung_log))):  # the last rung first, each rung by its score
        here = {lab: rung_log[k]["scores"][lab] for lab in order if reached[lab] == k}
        ranked += halving.advance(here, len(here), order)
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
    chosen = next(p for p in probes if p["label"] == chosen_label)
    base_only = [p for p in probes if p["addon"] == "none"]
    rung0 = {lab: records[lab]["scores"][str(steps[0])] for lab in order}
    tau = scoring.kendall(rung0, rules=label_free) if labels else {}
    trained_epochs = sum(p["steps"] for p in probes) / bpe  # each probe's steps, counted once
    full = len(order) * sp.epochs
    confirm_arm = chosen_label
    note = None
    if chosen["addon"] == "none":
        note = "no add-on scored above base-only on the selection rule: the tune found nothing that helps"
        best_addon = next((p for p in probes if p["addon"] != "none"), None)
        confirm_arm = best_addon["label"] if best_addon else chosen_label
    return {
        "schema": SCHEMA,
        "checkpoint": str(checkpoint),
        "dataset": str(dataset),
        "recipe": recipe,
        "method": method,
        "select": select,
        "rule": rule,
        "space": sp.to_dict(),
        "budget": budget,
        "eta": eta,
        "heldout": {
            "split_file": str(split),
            "train_images": n,
            "held_out": int(n_hold),
            "probe_train": n_probe,
            "source_split": "train",
            "note": "the dataset's test split is never read while tuning",
        },
        "schedule": [
            {"rung": r.index, "epochs": r.epochs, "probes": r.probes, "steps": s} for r, s in zip(rungs, steps)
        ],
        "batches_per_epoch": bpe,
        "rungs": rung_log,
        "probes": probes,
        "chosen": chosen,
        "note": note,
        "base_only": base_only[0] if base_only else None,
        "start": start,
        "kendall_tau": tau,
        "kendall_rung": 0,
        "confirm_arm": confirm_arm,
        "workers": workers,
        "cost": {
            "planned_epochs": halving.cost(rungs),
            "trained_epochs": trained_epochs,
            "full_grid_epochs": full,
            "fraction_of_full_grid": trained_epochs / full,
            "probe_train_seconds": round(sum(p["train_seconds"] for p in probes), 1),
            "probe_eval_seconds": round(sum(p["eval_seconds"] for p in probes), 1),
        },
    }


def _fmt(v, pct=False) -> str:
    if v is None:
        return ""
    return f"{100 * v:.2f}" if pct else f"{v:.4g}"


def to_markdown(res: dict) -> str:
    """tune.md's text: chosen setting, ranked probes, Kendall tau, cost, confirm table."""
    ch = res["chosen"]
    lines = [
        f"# e2mc tune: `{res['checkpoint']}` on `{res['dataset']}`",
        "",
        f"Selection `{res['select']}` on a seeded stratified held-out part of the TRAIN split "
        f"({res['heldout']['held_out']} of {res['heldout']['train_images']} images; the probes train on "
        f"{res['heldout']['probe_train']}); the test split is never read while tuning.",
        "",
        f"**Chosen: `{ch['label']}`** (rank 1 of {len(res['probes'])}; {ch['epochs']:.3g} epochs): "
        f"`{ch['overrides']}`.",
    ]
    if res.get("note"):
        lines += ["", f"Note: {res['note']}."]
    cols = ["knn_top1_k20", "linear_top1", "rankme", "entropy", "lidar", "alpha_req"]
    pct = {"knn_top1_k20", "linear_top1"}
    names = {
        "knn_top1_k20": "kNN@20 %",
        "linear_top1": "linear %",
        "rankme": "RankMe",
        "entropy": "entropy",
        "lidar": "LiDAR",
        "alpha_req": "alpha-ReQ",
    }
    used = [c for c in cols if any(c in p["metrics"] for p in res["probes"]) or c in res["start"]]
    lines += [
        "",
        "## Probes (ranked: last rung first, then by score)",
        "",
        "| rank | probe | rung | epochs | " + " | ".join(names[c] for c in used) + " | score |",
        "|" + "---|" * (5 + len(used)),
    ]
    for p in res["probes"]:
        lines.append(
            f"| {p['rank']} | {p['label']} | {p['rung']} | {p['epochs']:.3g} | "
            + " | ".join(_fmt(p["metrics"].get(c), c in pct) for c in used)
            + f" | {_fmt(p['score'])} |"
        )
    lines.append(
        "| | start (no training) | | 0 | " + " | ".join(_fmt(res["start"].get(c), c in pct) for c in used) + " | |"
    )
    if res["kendall_tau"]:
        lines += [
            "",
            f"## Can label-free selection be trusted here? Kendall tau vs held-out kNN@20 "
            f"(rung 0: all {len(res['probes'])} probes at {res['rungs'][0]['epochs']:.3g} epochs)",
            "",
            "| metric (selection score) | tau | p | n |",
            "|---|---|---|---|",
        ]
        for m, t in res["kendall_tau"].items():
            shown = "-abs(alpha - 1)" if m == "alpha_req" else m
            lines.append(f"| {shown} | {_fmt(t['tau'])} | {_fmt(t['p'])} | {t['n']} |")
    c = res["cost"]
    lines += [
        "",
        "## Cost",
        "",
        f"Schedule (eta {res['eta']}): "
        + "; ".join(
            f"rung {s['rung']}: {s['probes']} probe(s) to "
            f"{s['steps']} steps = {s['steps'] / res['batches_per_epoch']:.3g} "
            "epochs"
            for s in res["schedule"]
        )
        + ".",
        f"Trained {c['trained_epochs']:.3g} epochs of probe data = {100 * c['fraction_of_full_grid']:.1f}% of "
        f"the full grid's {c['full_grid_epochs']:.3g}; probe training {c['probe_train_seconds']:.0f} s, "
        f"scoring {c['probe_eval_seconds']:.0f} s (cumulative over invocations); this invocation "
        f"{res.get('wall_seconds', 0):.0f} s.",
    ]
    if res.get("confirm"):
        cf = res["confirm"]
        lines += [
            "",
            f"## Confirmation on the test split ({cf['seeds']} training seeds, full train split, "
            f"{cf['epochs']:.3g} epochs)",
            "",
        ]
        if cf["arm"] != ch["label"]:
            lines += [
                f"The chosen setting is base-only, so the best add-on probe `{cf['arm']}` is confirmed against it.",
                "",
            ]
        lines += [cf["markdown"].rstrip(), "", cf["verdict"]]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, res: dict) -> None:
    """tune.json, tune.md, tune.html (atomic)."""
    from e2mc.report.tune import write_tune_html

    write_json(out / "tune.json", res)
    md = to_markdown(res)
    atomic_write_text(out / "tune.md", md)
    write_tune_html(out / "tune.html", md, title="e2mc tune")
