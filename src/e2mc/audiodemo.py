"""``e2mc demo --modality audio``: the idea on synthetic animal vocalisations, offline, on a CPU.

The image demo's flow (:mod:`e2mc.demo`) on audio:

1. Synthetic calls (:mod:`e2mc.data.synthcalls`: callers with their own f0, contour depth,
   vibrato and harmonics; shared call types; noise) and a tiny random ``Wav2Vec2Model``
   (``models.audio.save_tiny_wav2vec2``), pre-trained on the calls with VICReg on mean+std pooled
   frames (an e2mc ``continue`` of the random encoder); all cached after the first run.
2. From that start, continue with VICReg alone and with VICReg + E2MC, once per seed, in
   parallel processes (:func:`e2mc.demo.continue_arms`).
3. Evaluate the start and every run per layer (``features``, ``layer1``, ``layer2``), kNN on
   train-standardised features and the linear probe, UAR and accuracy, on the held-out calls.
4. Compare (paired by seed), print, write ``results.json`` and the report (its per-layer curve:
   start vs the two arms). The headline is the last layer's linear-probe UAR, E2MC minus VICReg.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from e2mc import __version__
from e2mc.demo import BASE, E2MC_ARM, START, DemoConfig, continue_arms, demo_workers, headline, summarise

SEGMENT_S, CROP_S = 1.0, 0.5
DATA = dict(callers=6, clips=(12, 8), call_types=3, seconds=SEGMENT_S)  # per caller: train, test clips
WARM_MODULES = ("e2mc.train.loop", "e2mc.data.audioviews", "e2mc.models.audio", "transformers")


def _run_config(steps: int, addon: str = "none") -> dict:
    """The continue config (pre-training stage and arms) on the synthetic calls, as a dict."""
    return {
        "mode": "continue",
        "method": {"name": BASE},  # the image demo's base method (its arms' names)
        "addon": {"name": addon, "transform": "sigmoid", "entropy_weight": 10.0, "cov_weight": 1.0},
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "schedule": "constant", "batch_size": 16},
        "data": {"audio": {"segment_seconds": SEGMENT_S, "crop_seconds": CROP_S}},
        "train": {"epochs": 10**6, "max_steps": steps, "precision": "fp32", "log_every": 10, "probe_size": 0, "tensorboard": False,
                  "head_warmup_steps": 10},
    }  # fmt: skip


@dataclass
class AudioDemoConfig(DemoConfig):
    """The audio demo's settings; ``pretrain_epochs``/``continue_epochs`` are optimiser STEPS here."""

    pretrain_epochs: int = 200
    continue_epochs: int = 40
    protocols: tuple[str, ...] = ("knn", "linear")
    ks: tuple[int, ...] = (5,)
    data: dict = field(default_factory=lambda: dict(DATA))
    length_unit: str = "steps"


def start_dir(cfg: AudioDemoConfig) -> Path:
    """The cache folder of the synthetic calls, the tiny encoder and its pre-training."""
    from e2mc.demo import _cache_root

    key = json.dumps([cfg.data, _run_config(cfg.pretrain_epochs), cfg.extra, __version__], sort_keys=True)
    return _cache_root(cfg.cache_dir) / f"audio-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def pretrained_start(cfg: AudioDemoConfig, log: Callable[[str], None] = print) -> tuple[Path, Path, bool]:
    """``(calls folder, pre-trained run folder, cached)``: made once, then read from the cache."""
    from e2mc import continue_training
    from e2mc.data.synthcalls import write_calls
    from e2mc.models.audio import save_tiny_wav2vec2

    root = start_dir(cfg)
    calls, run, done = root / "calls", root / "start", root / "DONE"
    if done.is_file() and (run / "checkpoints" / "last.pt").is_file():
        log(f"[1/4] synthetic calls and pre-trained tiny wav2vec2 found in the cache: {root}")
        return calls, run, True
    log(f"[1/4] writing synthetic calls and pre-training a tiny wav2vec2 ({cfg.pretrain_epochs} steps): {root}")
    write_calls(calls, **cfg.data)
    encoder = save_tiny_wav2vec2(root / "encoder")
    resume = any((run / "checkpoints").glob("*.pt"))
    over = {"model.init": encoder, "data.dataset": str(calls), "train.seed": 0, "train.device": cfg.device,
            "out.dir": str(run), "out.resume": resume, "out.overwrite": not resume and run.exists(), **cfg.extra}  # fmt: skip
    continue_training(_run_config(cfg.pretrain_epochs), **{k.replace(".", "__"): v for k, v in over.items()})
    done.write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
    return calls, run, False


def run_audio_demo(cfg: AudioDemoConfig, log: Callable[[str], None] = print) -> dict:
    """Run the audio demo end to end; return what ``results.json`` holds."""
    import torch

    from e2mc.evaluation.compare import compare
    from e2mc.fileio import atomic_write_text
    from e2mc.report.html import write_report
    from e2mc.train.run import write_error
    from e2mc.workers import start_pool

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    workers = demo_workers(cfg, 2 * len(cfg.seeds))
    pool = start_pool(workers, cfg.threads, warm=WARM_MODULES) if workers > 1 else None
    try:
        calls, start, cached = pretrained_start(cfg, log)
        t_start = time.perf_counter()
        extra = {"data.dataset": str(calls), **cfg.extra}
        arms_cfg = dataclasses.replace(cfg, continue_recipe=_run_config(cfg.continue_epochs), extra=extra)
        arms = continue_arms(arms_cfg, start, log, pool=pool)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    t_arms = time.perf_counter()
    log(f"[3/4] evaluating {1 + sum(len(v) for v in arms.values())} checkpoints per layer ({', '.join(cfg.protocols)})")
    settings = {"eval.seeds": list(cfg.eval_seeds), "eval.device": cfg.device, "eval.layers": "all",
                "eval.knn.ks": list(cfg.ks), "eval.audio.segment_seconds": SEGMENT_S,
                "eval.audio.min_seconds": CROP_S, "eval.use_cache": False}  # fmt: skip
    comparison = compare(
        [[str(p) for p in arms[BASE]], [str(p) for p in arms[E2MC_ARM]], [str(start / "checkpoints" / "last.pt")]],
        names=[BASE, E2MC_ARM, START],
        dataset=str(calls),
        protocols=list(cfg.protocols),
        settings=settings,
    )
    t_eval = time.perf_counter()
    last = comparison_layers(comparison)[-1]
    head = headline(comparison, "linear", f"uar@{last}")
    comparison.headline = head
    wall = {"pretrain": round(t_start - t0, 1), "continue": round(t_arms - t_start, 1),
            "evaluate": round(t_eval - t_arms, 1)}  # fmt: skip
    log("[4/4] writing the report")
    comparison.wall_time_s = {("pretrain (cached)" if cached else "pretrain"): wall["pretrain"], **wall}
    comparison.to_json(cfg.out / "comparison.json")
    title = "e2mc audio demo: a tiny wav2vec2 continued with and without E2MC (synthetic callers)"
    paths = write_report(cfg.out, comparison, title=title)
    wall.update(report=round(time.perf_counter() - t_eval, 1), total=round(time.perf_counter() - t0, 1))
    results = {
        "e2mc_version": __version__,
        "dataset": f"synthetic vocalisations ({calls})",
        "arms": summarise(comparison),
        "seeds": list(cfg.seeds),
        "headline": head,
        "wall_time_s": wall,
        "pretrain_cached": cached,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "start_checkpoint": str(start / "checkpoints" / "last.pt"),
        "report": {k: str(v) for k, v in paths.items()},
    }
    atomic_write_text(cfg.out / "results.json", json.dumps(results, indent=2, default=str), error=write_error)
    from e2mc.evaluation.layertable import compare_tables

    log("")
    log(compare_tables(comparison, [r["metric"] for r in comparison.rows if "uar" in r["metric"]]))
    log(head["text"])
    log(
        f"Wall time {wall['total']:.0f} s (pre-train{' from the cache' if cached else ''} {wall['pretrain']:.0f} s, "
        f"continue {wall['continue']:.0f} s, evaluate {wall['evaluate']:.0f} s). Results: {cfg.out / 'results.json'}; "
        f"report: {paths.get('html', cfg.out)}"
    )
    return results


def comparison_layers(comparison) -> list[str]:
    """The layers of the comparison's per-layer metrics, in order."""
    from e2mc.evaluation.layertable import layered

    return layered([r["metric"] for r in comparison.rows]).get("linear", ([], ["final"]))[1]
