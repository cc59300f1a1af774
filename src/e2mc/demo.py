"""``e2mc demo``: the whole idea on the embedded digits data, offline, in a few CPU minutes.

1. Pre-train a small ResNet with VICReg (``digits_vicreg_pretrain``); cached after the first run.
2. From that same start, continue for a few epochs with (a) the VICReg loss only and
   (b) VICReg + E2MC, once per seed (the seed sets data order, augmentations and head noise).
3. Evaluate the start and every continued checkpoint with kNN, the linear probe and RankMe.
4. Print the comparison, write ``results.json`` and the report (Markdown, HTML, PNGs).

The verdict is computed, never assumed: E2MC minus base-only with a 95% t-interval, taken from the
comparison table's row (``e2mc.evaluation.stats``: paired by training seed, as both arms share the
seeds); the demo says "no clear difference" when the interval contains zero.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from e2mc import __version__
from e2mc.fileio import cache_root

START = "start"
BASE = "vicreg"
E2MC_ARM = "vicreg+e2mc"
HEADLINE = ("knn", "top1_k20")
WARM_MODULES = ("e2mc.train.loop", "e2mc.data.views", "e2mc.data.datasets", "torchvision")
TABLE_METRICS = (
    "knn/top1_k20",
    "knn/top1_k200",
    "linear/top1",
    "rankme/backbone",
    "rankme/projector",
    "entropy/entropy",
    "entropy/covariance",
)


@dataclass
class DemoConfig:
    """Settings of the demo; the defaults are the ones the README's first command runs."""

    out: Path
    seeds: tuple[int, ...] = (0, 1, 2)
    pretrain_epochs: int = 40
    continue_epochs: int = 10
    pretrain_recipe: str = "digits_vicreg_pretrain"
    continue_recipe: str = "digits_vicreg_e2mc"
    protocols: tuple[str, ...] = ("knn", "linear", "rankme", "entropy", "spectrum")
    eval_seeds: tuple[int, ...] = (0,)
    cache_dir: Path | None = None
    device: str = "cpu"
    threads: int | None = 1  # intra-op CPU threads; 1 is robust on a shared machine (see run_demo)
    workers: int | None = None  # processes for the continue stage; None: one per core (demo_workers)
    extra: dict = field(default_factory=dict)  # dotted overrides for both stages (tests: tiny runs)
    length_unit: str = "epochs"  # what pretrain_epochs / continue_epochs count (the audio demo: steps)


def _cache_root(cache_dir: Path | None) -> Path:

    root = cache_dir or cache_root()
    return Path(root) / "demo"


def _start_overrides(cfg: DemoConfig) -> dict:
    return {"train.epochs": cfg.pretrain_epochs, "train.seed": 0, "train.device": cfg.device, **cfg.extra}


def start_dir(cfg: DemoConfig) -> Path:
    """The cache folder of the demo's start: keyed by the recipe, its overrides and the e2mc version."""
    from e2mc.recipes import recipe_path

    key_src = json.dumps(
        [recipe_path(cfg.pretrain_recipe).read_text(), _start_overrides(cfg), __version__], sort_keys=True
    )
    return _cache_root(cfg.cache_dir) / f"start-{hashlib.sha256(key_src.encode()).hexdigest()[:12]}"


def start_cached(cfg: DemoConfig) -> bool:
    """Whether the pre-trained start is complete in the cache (then the demo skips pre-training)."""
    run_dir = start_dir(cfg)
    return (run_dir / "DONE").is_file() and (run_dir / "checkpoints" / "last.pt").is_file()


def pretrained_start(cfg: DemoConfig, log: Callable[[str], None] = print) -> Path:
    """The demo's starting checkpoint: pre-trained once, then reused from the cache.

    The cache key covers the recipe, its overrides and the e2mc version; an interrupted
    pre-training resumes where it stopped.
    """
    from e2mc import pretrain

    overrides = _start_overrides(cfg)
    run_dir = start_dir(cfg)
    done = run_dir / "DONE"
    if start_cached(cfg):
        log(f"[1/4] pre-trained start found in the cache: {run_dir}")
        return run_dir
    resume = any((run_dir / "checkpoints").glob("*.pt"))  # last.pt, else the newest epoch_N.pt
    log(
        f"[1/4] pre-training the start with VICReg for {cfg.pretrain_epochs} epochs "
        f"({'resuming' if resume else 'cached afterwards'}): {run_dir}"
    )
    pretrain(
        cfg.pretrain_recipe,
        **{k.replace(".", "__"): v for k, v in overrides.items()},
        out__dir=str(run_dir),
        out__resume=resume,
        out__overwrite=not resume and run_dir.exists(),
    )
    done.write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
    return run_dir


def _continue_run(job: dict) -> float:
    """One continuation (a worker's job): ``continue_training`` with ``job``'s overrides; its seconds.

    With ``job["log"]`` set (parallel runs), the run's progress lines go to that file rather than
    interleaving with the other process's on the terminal."""
    import contextlib

    from e2mc import continue_training

    t0 = time.perf_counter()
    kwargs = {k.replace(".", "__"): v for k, v in job["overrides"].items()}
    if job.get("log"):
        Path(job["log"]).parent.mkdir(parents=True, exist_ok=True)
        with open(job["log"], "w") as fh, contextlib.redirect_stderr(fh), contextlib.redirect_stdout(fh):
            continue_training(job["recipe"], **kwargs)
    else:
        continue_training(job["recipe"], **kwargs)
    return time.perf_counter() - t0


def demo_workers(cfg: DemoConfig, jobs: int) -> int:
    """Processes for the continue stage: ``cfg.workers``, else one per CPU core (at most ``jobs``)."""
    import os

    n = cfg.workers if cfg.workers else (os.cpu_count() or 1) // max(1, cfg.threads or 1)
    return max(1, min(n, jobs))


def continue_arms(cfg: DemoConfig, start: Path, log: Callable[[str], None] = print, pool=None) -> dict[str, list[Path]]:
    """Continue the start once per seed with the base loss only and with base + E2MC.

    The runs are independent, so they run in parallel processes of ``cfg.threads`` threads each
    (:func:`demo_workers`); every run is seeded, so the checkpoints are the same as one after another."""
    from e2mc.workers import run_in_processes

    ckpt = start / "checkpoints" / "last.pt"
    jobs = []
    for seed in cfg.seeds:
        for arm, addon in ((BASE, "none"), (E2MC_ARM, "e2mc")):
            run_dir = cfg.out / "runs" / f"{arm.replace('+', '_')}-seed{seed}"
            jobs.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "dir": run_dir,
                    "recipe": cfg.continue_recipe,
                    "overrides": {
                        "model.init": str(ckpt),
                        "addon.name": addon,
                        "train.seed": seed,
                        "train.epochs": cfg.continue_epochs,
                        "train.device": cfg.device,
                        "out.dir": str(run_dir),
                        **cfg.extra,
                    },
                }
            )
    total, workers = len(jobs), demo_workers(cfg, len(jobs))
    t0 = time.perf_counter()
    state = {"done": 0}

    def eta() -> str:
        done = state["done"]
        if not done or done == total:
            return ""
        left = divmod(round((time.perf_counter() - t0) / done * (total - done)), 60)
        return f" (stage ETA {left[0]}:{left[1]:02d} at the pace so far)"

    def finished(i: int, seconds: float) -> None:
        state["done"] += 1
        job = jobs[i]
        log(f"[2/4] finished ({state['done']}/{total}): {job['arm']}, seed {job['seed']} in {seconds:.0f} s" + eta())

    if workers > 1:
        for job in jobs:
            job["log"] = str(job["dir"] / "train.log")
        log(
            f"[2/4] continuing {total} runs ({BASE} and {E2MC_ARM}, seeds {', '.join(map(str, cfg.seeds))}; "
            f"{cfg.continue_epochs} {cfg.length_unit} each) in {workers} processes of {cfg.threads or 'default'} thread(s); "
            f"each run's log: {cfg.out / 'runs'}/<run>/train.log"
        )
        run_in_processes(
            _continue_run,
            jobs,
            workers,
            threads=cfg.threads,
            on_done=finished,
            label=lambda job: f"continuing {job['arm']} seed {job['seed']}",
            pool=pool,
        )
    else:
        for i, job in enumerate(jobs):
            log(
                f"[2/4] continuing ({i + 1}/{total}): {job['arm']}, seed {job['seed']}, {cfg.continue_epochs} "
                f"{cfg.length_unit} -> {job['dir']}" + eta()
            )
            finished(i, _continue_run(job))
    arms: dict[str, list[Path]] = {BASE: [], E2MC_ARM: []}
    for job in jobs:
        arms[job["arm"]].append(job["dir"])
    return arms


def headline(comparison, protocol: str = HEADLINE[0], metric: str = HEADLINE[1]) -> dict:
    """E2MC minus base-only on one metric: the comparison table's own difference and interval
    (paired by training seed when both arms have the same seeds, Welch otherwise), with the verdict
    and one-line text of :func:`e2mc.evaluation.compare.headline` (the same the report shows)."""
    from e2mc.evaluation.compare import headline as comparison_headline

    key = f"{protocol}/{metric}"
    base, row = comparison.row(BASE, key), comparison.row(E2MC_ARM, key)
    head = comparison_headline(comparison, E2MC_ARM, key, subject="E2MC", ref_label="base-only")
    return {
        "metric": key,
        "base": base["values"],
        "e2mc": row["values"],
        "base_seeds": base["train_seeds"],
        "e2mc_seeds": row["train_seeds"],
        "difference": row["diff"],
        "low": row["diff_low"],
        "high": row["diff_high"],
        "kind": row["diff_kind"],
        "n": len(base["values"]),
        "verdict": head["verdict"],
        "text": head["text"],
    }


def summarise(comparison) -> dict:
    """``{arm: {metric: {"mean", "std", "n"}}}`` from the comparison's rows."""
    out: dict = {}
    for row in comparison.rows:
        out.setdefault(row["arm"], {})[row["metric"]] = {"mean": row["mean"], "std": row["std"], "n": row["n"]}
    return out


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict:
    """Run the demo end to end; return what ``results.json`` holds."""
    import torch

    from e2mc.evaluation.compare import compare
    from e2mc.report.html import write_report
    from e2mc.workers import start_pool

    if cfg.threads:
        # The demo's model is tiny: with more than one OpenMP thread, any other busy process on
        # the machine makes each step wait on a descheduled thread (measured: up to 50x slower on
        # 2 shared cores), while one thread costs little on an idle machine.
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    cached = start_cached(cfg)
    # The continue stage's worker processes start now: their imports (seconds of torch) overlap
    # the pre-training, which uses cfg.threads of the cores.
    workers = demo_workers(cfg, 2 * len(cfg.seeds))
    pool = start_pool(workers, cfg.threads, warm=WARM_MODULES) if workers > 1 else None
    try:
        start = pretrained_start(cfg, log)
        t_start = time.perf_counter()
        arms = continue_arms(cfg, start, log, pool=pool)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    t_arms = time.perf_counter()
    log(
        f"[3/4] evaluating {1 + sum(len(v) for v in arms.values())} checkpoints "
        f"({', '.join(cfg.protocols)}) on the digits test split"
    )
    comparison = compare(
        [[str(p) for p in arms[BASE]], [str(p) for p in arms[E2MC_ARM]], [str(start / "checkpoints" / "last.pt")]],
        names=[BASE, E2MC_ARM, START],
        dataset="digits",
        protocols=list(cfg.protocols),
        settings={"eval.seeds": list(cfg.eval_seeds), "eval.device": cfg.device},
    )
    t_eval = time.perf_counter()
    head = headline(comparison)
    comparison.headline = head
    wall = {
        "pretrain": round(t_start - t0, 1),
        "continue": round(t_arms - t_start, 1),
        "evaluate": round(t_eval - t_arms, 1),
    }
    log("[4/4] writing the report")
    comparison.wall_time_s = {
        ("pretrain (cached)" if cached else "pretrain"): wall["pretrain"],
        "continue": wall["continue"],
        "evaluate": wall["evaluate"],
        "total before the report": round(time.perf_counter() - t0, 1),
    }
    comparison.to_json(cfg.out / "comparison.json")  # with its verdict and times: `e2mc report` regenerates the same
    paths = write_report(cfg.out, comparison, title="e2mc demo: VICReg continued with and without E2MC (digits)")
    wall.update(report=round(time.perf_counter() - t_eval, 1), total=round(time.perf_counter() - t0, 1))
    results = {
        "e2mc_version": __version__,
        "dataset": "digits (scikit-learn, embedded)",
        "arms": summarise(comparison),
        "seeds": list(cfg.seeds),
        "n_seeds": {BASE: len(arms[BASE]), E2MC_ARM: len(arms[E2MC_ARM]), START: 1},
        "headline": head,
        "wall_time_s": wall,
        "pretrain_cached": cached,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "start_checkpoint": str(start / "checkpoints" / "last.pt"),
        "report": {k: str(v) for k, v in paths.items()},
    }
    from e2mc.fileio import atomic_write_text
    from e2mc.train.run import write_error

    atomic_write_text(cfg.out / "results.json", json.dumps(results, indent=2, default=str), error=write_error)
    log("")
    log(comparison.to_markdown(metrics=TABLE_METRICS))
    log("")
    log(head["text"])
    log(
        f"Wall time {wall['total']:.0f} s (pre-train{' from the cache' if cached else ''} {wall['pretrain']:.0f} s, "
        f"continue {wall['continue']:.0f} s, evaluate {wall['evaluate']:.0f} s). Results: {cfg.out / 'results.json'}; "
        f"report: {paths.get('html', cfg.out)}"
    )
    return results
