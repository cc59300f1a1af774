"""kNN@20/200 and RankMe of a pre-training run's epoch checkpoints: has the start flattened?

Evaluates every ``RUN/checkpoints/epoch_XXXX.pt`` not yet in the curve file with
``e2mc.evaluation.api.evaluate`` (kNN and RankMe by default), appends the points to
``OUT.json``, rewrites ``OUT.md`` and plots ``OUT.png``. Run it again while the run goes on: only
new epochs are evaluated. ``--holdout N`` evaluates on a seeded stratified holdout of N TRAIN
images instead (kNN bank: the other train images), written as a split file ``OUT.split.json``.

    OMP_NUM_THREADS=1 nice -n 10 python -m benchmarks.reproduce.curve \
        --run /work/e2mc-runs/cifar10_vicreg_r18 --out benchmarks/results/cifar10_vicreg_curve
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.reproduce.common import command_line, machine, read_json, write_json

COLUMNS = (
    ("knn/top1_k20", "kNN@20 (%)", 100.0),
    ("knn/top1_k200", "kNN@200 (%)", 100.0),
    ("rankme/backbone", "RankMe backbone", 1.0),
    ("rankme/projector", "RankMe projector", 1.0),
)


def columns(curve: dict) -> tuple:
    """The ``COLUMNS`` some point has (a DINO model has no ``projector``: no RankMe projector column)."""
    return tuple(c for c in COLUMNS if any(c[0] in p["metrics"] for p in curve["points"]))


def _ext(stem: Path, ext: str) -> Path:
    return stem.parent / (stem.name + ext)


def epoch_checkpoints(run: str | Path) -> list[tuple[int, Path]]:
    """``[(epoch, path)]`` of ``RUN/checkpoints/epoch_XXXX.pt``, sorted (temp files ignored)."""
    out = []
    for p in sorted(Path(run, "checkpoints").glob("epoch_*.pt")):
        try:
            out.append((int(p.stem.split("_", 1)[1]), p))
        except ValueError:
            continue
    return out


def eval_data_for(run: str | Path, out: Path, dataset: str | None, holdout: int | None, seed: int) -> str:
    """The dataset spec to evaluate on: the run's data (its test split), or a train holdout split file."""
    from e2mc.errors import ConfigError

    if dataset is None:
        import yaml

        cfg = Path(run, "config.yaml")
        dataset = (yaml.safe_load(cfg.read_text()) or {}).get("data", {}).get("dataset") if cfg.is_file() else None
        if not dataset:
            raise ConfigError(f"cannot tell the dataset of {run} (no config.yaml); pass --dataset")
    if not holdout:
        return str(dataset)
    from e2mc.data.datasets import build_dataset
    from e2mc.data.splits import write_split_file

    split = out.with_name(out.name + ".split.json")
    if not split.is_file():
        write_split_file(split, dataset, build_dataset(dataset, "train").targets, holdout, seed)
    return str(split)


def update_curve(
    run, out, *, dataset=None, holdout=None, holdout_seed=0, protocols=("knn", "rankme"), every=1, log=print
) -> dict:
    """Evaluate the new epochs, write ``OUT.{json,md,png}``; return the curve dict."""
    from e2mc.evaluation.api import evaluate, evaluation_settings
    from e2mc.evaluation.compare import metric_values

    out = Path(out)
    data = eval_data_for(run, out, dataset, holdout, holdout_seed)
    curve = read_json(_ext(out, ".json")) or {"run": str(run), "eval_data": data, "points": []}
    if curve.get("eval_data") != data:
        from e2mc.errors import ConfigError

        raise ConfigError(f"{out}.json holds a curve on {curve.get('eval_data')}, not {data}; use another --out")
    done = {p["epoch"] for p in curve["points"]}
    todo = [(e, p) for e, p in epoch_checkpoints(run) if e not in done and e % every == 0]
    log(f"{len(todo)} new epoch checkpoint(s) to evaluate in {run}: {[e for e, _ in todo]}")
    for epoch, path in todo:
        t0 = time.perf_counter()
        settings = evaluation_settings(seeds=(0,), ks=(20, 200), device="cpu", use_cache=False)
        res = evaluate(str(path), data, tuple(protocols), settings)
        vals = {k: v[0] for k, v in metric_values(res).items()}
        point = {
            "epoch": epoch,
            "checkpoint": str(path),
            "metrics": vals,
            "seconds": round(time.perf_counter() - t0, 1),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        curve["points"] = sorted(curve["points"] + [point], key=lambda p: p["epoch"])
        if epoch == todo[0][0]:
            curve.setdefault("invocations", []).append({"command": command_line(), "machine": machine()})
        write_json(_ext(out, ".json"), curve)
        log(
            f"epoch {epoch}: "
            + ", ".join(f"{name} {scale * vals[k]:.4g}" for k, name, scale in COLUMNS if k in vals)
            + f" ({point['seconds']:.0f} s)"
        )
    write_markdown(curve, _ext(out, ".md"))
    if curve["points"]:
        plot(curve, _ext(out, ".png"))
    return curve


def write_markdown(curve: dict, path: Path) -> None:
    """One row per evaluated epoch."""
    cols = columns(curve)
    lines = [
        f"# Pre-training curve: {curve['run']}",
        "",
        f"Evaluated on `{curve['eval_data']}` (kNN bank: its train part; scored: its test part). "
        "Epochs count completed epochs.",
        "",
        "| epoch | " + " | ".join(n for _, n, _ in cols) + " | seconds |",
        "|---|" + "---|" * (len(cols) + 1),
    ]
    for p in curve["points"]:
        cells = [f"{s * p['metrics'][k]:.4g}" if k in p["metrics"] else "" for k, _, s in cols]
        lines.append(f"| {p['epoch']} | " + " | ".join(cells) + f" | {p['seconds']} |")
    inv = curve.get("invocations", [])
    if inv:
        lines += ["", f"Command: `{inv[-1]['command']}`", "", f"Machine: {inv[-1]['machine']}"]
    path.write_text("\n".join(lines) + "\n")


def plot(curve: dict, path: Path) -> None:
    """kNN accuracies (left axis) and RankMe (right axis) against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = curve["points"]
    ep = [p["epoch"] for p in pts]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for k, name, s in COLUMNS[:2]:
        ax.plot(ep, [s * p["metrics"].get(k, float("nan")) for p in pts], marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("kNN top-1 (%)")
    ax2 = ax.twinx()
    for (k, name, _), color in zip([c for c in columns(curve) if c in COLUMNS[2:]], ("C2", "C3")):
        ax2.plot(
            ep, [p["metrics"].get(k, float("nan")) for p in pts], linestyle="--", marker=".", color=color, label=name
        )
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax2.set_ylabel("RankMe")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower right")
    ax.set_title(Path(curve["run"]).name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    """CLI (see the module docstring)."""
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="pre-training run folder (holds checkpoints/epoch_XXXX.pt)")
    ap.add_argument("--out", required=True, help="output stem: writes OUT.json, OUT.md, OUT.png")
    ap.add_argument("--dataset", default=None, help="eval data spec (default: the run's data.dataset)")
    ap.add_argument("--holdout", type=int, default=None, help="evaluate on N held-out TRAIN images instead")
    ap.add_argument("--holdout-seed", type=int, default=0)
    ap.add_argument("--protocols", default="knn,rankme")
    ap.add_argument("--every", type=int, default=1, help="only epochs divisible by this")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    update_curve(
        args.run,
        args.out,
        dataset=args.dataset,
        holdout=args.holdout,
        holdout_seed=args.holdout_seed,
        protocols=[p for p in args.protocols.split(",") if p],
        every=args.every,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
