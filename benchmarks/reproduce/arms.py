"""Continue one committed start in several arms, evaluate them, write the comparison.

Every arm continues the SAME start with the same recipe, optimiser, LR, batch and epochs; arms
differ only in the add-on (:data:`ARMS`), except ``naive`` (DINO starts only, :data:`ARM_METHODS`):
DINO-only, as a user's continuation with the official pre-training's schedules restarted
(teacher temperature warm-up, teacher momentum from 0.996, the last layer frozen for the first
epoch), a zero centre and no collapse guard. Each (arm, seed) is one e2mc run folder under
``OUT/runs``; a finished one is skipped, an interrupted one resumes. Evaluations are memoised per
checkpoint (``OUT/evals``), so arms can be added one invocation at a time and the table, JSON and
plots are rewritten each time from everything finished so far.

``--select`` chooses E2MC's weights / LR / epochs without the test split: a seeded stratified
holdout of ``--holdout`` training images is split off (``OUT/split.json``), continuation trains
on the rest and every epoch checkpoint is evaluated on the holdout; comma lists of ``--lr``,
``--entropy-weight`` and ``--cov-weight`` form a grid. See ``benchmarks/reproduce/README.md``.

    python -m benchmarks.reproduce.arms --start benchmarks/starts/cifar10_vicreg_r18 \
        --arms base,e2mc --seeds 0,1,2 --epochs 2 --lr 0.05 --out benchmarks/results/cifar10_vicreg
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.reproduce import results as R
from benchmarks.reproduce.common import SCHEMA, cached_evaluate, command_line, machine, read_json, write_json
from benchmarks.reproduce.export_start import start_paths

# arm name -> add-on overrides (E2MC weights from --entropy-weight / --cov-weight are applied first)
ARMS: dict[str, dict] = {
    "base": {"addon.name": "none"},
    "e2mc": {"addon.name": "e2mc"},
    "e2mc_entropy": {"addon.name": "e2mc", "addon.cov_weight": 0.0},
    "e2mc_cov": {"addon.name": "e2mc", "addon.entropy_weight": 0.0},
    "vc": {"addon.name": "vc"},
    "uniformity": {"addon.name": "uniformity"},
    "mmcr": {"addon.name": "mmcr"},
    "naive": {
        "addon.name": "none",
        "method.continue_temp_warmup": True,
        "method.center_init": "zero",
        "method.continue_momentum": 0.996,
        "method.continue_freeze_last_layer": 1,
        "train.guard.action": "off",
    },
}
ARM_METHODS = {"naive": ("dino",)}  # arms that only a start of these methods can run
BASE = "base"  # the base loss alone (VICReg only, DINO only, ...): every other arm's reference
TRANSFORM_TAGS = {"sigmoid": "sig", "gaussian_cdf": "cdf", "identity": "id"}


def _floats(text: str) -> list[float]:
    return [float(x) for x in str(text).split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


def _num(x: float) -> str:
    return f"{x:g}"


def plan(args) -> list[dict]:
    """One dict per (arm, setting, seed) to run: label, run folder, overrides."""
    from e2mc.errors import ConfigError

    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        raise ConfigError(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    method = getattr(args, "start_method", None)
    wrong = [a for a in args.arms if a in ARM_METHODS and method not in ARM_METHODS[a]]
    if wrong:
        raise ConfigError(
            f"arm(s) {wrong} need a start of method {sorted({m for a in wrong for m in ARM_METHODS[a]})}; "
            f"this start is {method!r}: drop them from --arms"
        )
    if (
        not args.select
        and max(len(args.lr), len(args.entropy_weight), len(args.cov_weight), len(args.transform), len(args.m)) > 1
    ):
        raise ConfigError(
            "lists of --lr / --entropy-weight / --cov-weight / --transform / --m are a grid: only with --select"
        )
    jobs = []
    for arm in args.arms:
        e2mc_arm = ARMS[arm].get("addon.name") == "e2mc"
        ew_, cw_, tr_, m_ = (
            (args.entropy_weight, args.cov_weight, args.transform, args.m)
            if e2mc_arm
            else ([None], [None], [None], [None])
        )
        grid = [(lr, ew, cw, tr, m) for lr in args.lr for ew in ew_ for cw in cw_ for tr in tr_ for m in m_]
        for lr, ew, cw, tr, m in grid:
            over = {"optim.lr": lr}
            if e2mc_arm:
                over.update({"addon.entropy_weight": ew, "addon.cov_weight": cw})
                # transform / m enter the overrides (and the label) only when asked for, so run folders
                # made before these options existed keep matching their harness.json
                if tr is not None:
                    over["addon.transform"] = tr
                if m is not None:
                    over["addon.m"] = m
            over.update(ARMS[arm])
            label = arm
            if args.select:
                label += f"-lr{_num(lr)}" + (
                    f"-ew{_num(over['addon.entropy_weight'])}-cw{_num(over['addon.cov_weight'])}" if e2mc_arm else ""
                )
                label += f"-{TRANSFORM_TAGS.get(tr, tr)}" if tr is not None else ""
                label += f"-m{m}" if m is not None else ""
            for seed in args.seeds:
                jobs.append(
                    {
                        "arm": arm,
                        "label": label,
                        "seed": seed,
                        "lr": lr,
                        "overrides": over,
                        "dir": Path(args.out) / "runs" / f"{label}-seed{seed}",
                    }
                )
    return jobs


def run_one(job: dict, common: dict, log=print) -> float:
    """Train (or resume, or skip) one (arm, seed); return the seconds spent now."""
    from e2mc import continue_training
    from e2mc.errors import ConfigError

    run_dir: Path = job["dir"]
    over = {**common, **job["overrides"], "train.seed": job["seed"], "out.dir": str(run_dir)}
    marker = run_dir / "harness.json"
    state = read_json(marker)
    if state is not None and state["overrides"] != over:
        raise ConfigError(
            f"{run_dir} was trained with other settings ({marker}); use another --out or delete that run folder"
        )
    if state is not None and state.get("done"):
        log(f"skip {job['label']} seed {job['seed']}: done ({run_dir})")
        return 0.0
    state = state or {
        "arm": job["arm"],
        "label": job["label"],
        "seed": job["seed"],
        "overrides": over,
        "train_seconds": 0.0,
    }
    write_json(marker, {**state, "done": False})
    resume = (run_dir / "checkpoints" / "last.pt").is_file()  # interrupted: resume; else (re)start clean
    log(f"{'resume' if resume else 'train'} {job['label']} seed {job['seed']} -> {run_dir}")
    t0 = time.perf_counter()
    try:
        continue_training(
            common["recipe"],
            **{k: v for k, v in over.items() if k != "recipe"},
            out__resume=resume,
            out__overwrite=not resume,
        )
    except BaseException:  # stopped (RunInterrupted, ^C) or failed: keep the seconds spent so far, not done
        state["train_seconds"] = round(state["train_seconds"] + time.perf_counter() - t0, 1)
        write_json(marker, {**state, "done": False})
        raise
    dt = time.perf_counter() - t0
    state.update(
        done=True, train_seconds=round(state["train_seconds"] + dt, 1), finished=time.strftime("%Y-%m-%d %H:%M:%S")
    )
    write_json(marker, state)
    return dt


def checkpoints_of(run_dir: Path, select: bool) -> list[tuple[str, Path]]:
    """``[(suffix, checkpoint)]``: every epoch checkpoint in select mode, else ``last.pt``."""
    ck = run_dir / "checkpoints"
    epochs = sorted(ck.glob("epoch_*.pt"))
    if select and epochs:
        return [(f"@ep{int(p.stem.split('_')[1])}", p) for p in epochs]
    return [("", ck / "last.pt")]


def evaluate_all(args, eval_data: str, start_model: Path, log=print) -> tuple[dict, dict, dict, list[Path]]:
    """Evaluate the start and every finished run in OUT; return (per_label, arm_of, eval seconds, run dirs)."""
    store = Path(args.out) / "evals"
    per_label: dict = {}
    arm_of: dict = {}
    seconds: dict = {}
    res, dt = cached_evaluate(start_model, eval_data, args.protocols, store, log=log)
    per_label[R.START] = {0: res}
    seconds[R.START] = round(dt, 1)
    runs = []
    for marker in sorted((Path(args.out) / "runs").glob("*/harness.json")):
        st = read_json(marker)
        if not st.get("done"):
            continue
        runs.append(marker.parent)
        for suffix, ckpt in checkpoints_of(marker.parent, args.select):
            label = st["label"] + suffix
            res, dt = cached_evaluate(ckpt, eval_data, args.protocols, store, log=log)
            per_label.setdefault(label, {})[st["seed"]] = res
            arm_of[label] = st["arm"]
            seconds[f"{label}-seed{st['seed']}"] = round(dt, 1)
    return per_label, arm_of, seconds, runs


def reference_of(label: str, arm_of: dict, labels) -> str | None:
    """The base-only label a label is compared with: same LR (select mode) and same epoch."""
    if label == R.START:
        return next((lab for lab in labels if arm_of.get(lab) == BASE and "@" not in lab), None)
    if arm_of.get(label) == BASE:
        return None
    lr = next((p for p in label.split("@")[0].split("-") if p.startswith("lr")), None)
    ep = label.split("@")[1] if "@" in label else None
    for lab in labels:
        if arm_of.get(lab) != BASE:
            continue
        if (lr is None or f"-{lr}" in lab.split("@")[0]) and (lab.split("@")[1] if "@" in lab else None) == ep:
            return lab
    return None


def report(args, per_label, arm_of, eval_seconds, runs, settings, log=print) -> dict:
    """Write ``results.json``, ``table.md`` and the plots (``write_report``); return the JSON dict."""
    from e2mc.evaluation.compare import ComparisonResult, build_rows
    from e2mc.report.html import write_report

    out = Path(args.out)
    order = sorted(
        per_label,
        key=lambda lab: (
            lab != R.START,
            arm_of.get(lab) != BASE,
            list(ARMS).index(arm_of[lab]) if lab in arm_of else -1,
            lab,
        ),
    )
    refs = {lab: reference_of(lab, arm_of, order) for lab in order}
    summary = R.summarise({lab: per_label[lab] for lab in order}, refs)
    history = read_json(out / "results.json", {}).get("invocations", [])
    history.append({"command": command_line(), "machine": machine(), "wall_time_s": settings.pop("_wall", {})})
    train_s = {p.name: read_json(p / "harness.json")["train_seconds"] for p in runs}
    sel = R.select_best(summary, arm_of, "e2mc", args.criterion) if args.select else None
    notes = [
        f"Start `{args.start}`; eval data `{settings['eval_data']}` "
        f"({'held-out part of the TRAIN split' if args.select else 'train split as kNN bank / probe data, test split scored'}); "
        f"{settings['epochs']} epoch(s), batch {settings['batch_size']}, recipe `{settings['recipe']}`."
    ]
    if sel:
        notes.append(
            f"Selection ({args.criterion}, held-out): best E2MC setting **{sel['label']}**, ranking "
            f"{', '.join(sel['ranking'][:5])}."
        )
    obj = {
        "schema": SCHEMA,
        "mode": "select" if args.select else "test",
        "settings": settings,
        "arms": summary,
        "arm_of": arm_of,
        "reference": refs,
        "selection": sel,
        "wall_time_s": {
            "train": train_s,
            "evaluate": eval_seconds,
            "train_by_arm": _by_arm(train_s, runs),
            "total_train": round(sum(train_s.values()), 1),
            "total_evaluate": round(sum(eval_seconds.values()), 1),
        },
        "invocations": history,
    }
    write_json(out / "results.json", obj)
    (out / "table.md").write_text(
        R.to_markdown(summary, title=args.title or f"Arms from {Path(args.start).name}", notes=notes)
    )
    names = [lab for lab in order if lab != R.START] + [R.START]
    res = [[per_label[lab][s] for s in sorted(per_label[lab])] for lab in names]
    seeds = [sorted(per_label[lab]) for lab in names]  # training seeds: the report pairs by them
    comp = ComparisonResult(
        names,
        [[lab] for lab in names],
        settings["eval_data"],
        list(args.protocols),
        [0],
        res,
        build_rows(names, res, seeds),
        seeds,
    )
    comp.to_json(out / "comparison.json")
    write_report(out / "report", comp, runs=runs, title=args.title or "e2mc arms")
    log((out / "table.md").read_text())
    return obj


def _by_arm(train_s: dict, runs) -> dict:
    out: dict = {}
    for p in runs:
        arm = read_json(p / "harness.json")["arm"]
        out[arm] = round(out.get(arm, 0.0) + train_s[p.name], 1)
    return out


def parse(argv=None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--start", required=True, help="start folder written by export_start (model.safetensors + start.json)"
    )
    ap.add_argument("--out", required=True, help="results folder (runs/, evals/, results.json, table.md, report/)")
    ap.add_argument(
        "--arms",
        type=lambda s: [a for a in s.split(",") if a],
        default=["base", "e2mc"],
        help=f"comma list from {', '.join(ARMS)}",
    )
    ap.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument(
        "--lr", type=_floats, required=True, help="the recipe optimiser's base LR (comma list = grid, --select only)"
    )
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--entropy-weight", type=_floats, default=[10.0], help="E2MC entropy weight (grid with --select)")
    ap.add_argument("--cov-weight", type=_floats, default=[1.0], help="E2MC covariance weight (grid with --select)")
    ap.add_argument(
        "--transform",
        type=lambda s: [t for t in s.split(",") if t],
        default=[None],
        help="E2MC transform(s): sigmoid, gaussian_cdf, identity (default: the recipe's; grid with --select)",
    )
    ap.add_argument(
        "--m", type=_ints, default=[None], help="E2MC m-spacing(s) (default: round(sqrt(N)); grid with --select)"
    )
    ap.add_argument(
        "--recipe",
        default="cifar10_vicreg_e2mc",
        help="continue recipe every arm starts from (a DINO start: cifar10_dino_continue)",
    )
    ap.add_argument("--dataset", default=None, help="training data spec (default: the start's pre-training data)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra override key=value for every arm")
    ap.add_argument("--protocols", type=lambda s: [p for p in s.split(",") if p], default=["knn", "linear", "rankme"])
    ap.add_argument("--select", action="store_true", help="hold out part of the TRAIN split and evaluate there")
    ap.add_argument("--holdout", type=int, default=5000, help="--select: held-out training images")
    ap.add_argument("--holdout-seed", type=int, default=0)
    ap.add_argument("--criterion", default="knn/top1_k20", help="--select: metric that picks the E2MC setting")
    ap.add_argument("--no-eval", action="store_true", help="train only (evaluate later)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is robust on a shared CPU)")
    ap.add_argument("--title", default=None)
    return ap.parse_args(argv)


def main(argv=None, log=print) -> dict | None:
    """Run the plan, evaluate and report; return the results dict (None with ``--no-eval``)."""
    import torch

    from e2mc.config import parse_override
    from e2mc.errors import ConfigError

    args = parse(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = Path(args.out)
    start_model, start_meta = start_paths(args.start)
    args.start_method = start_meta.get("method")
    dataset = args.dataset or (start_meta.get("config") or {}).get("data", {}).get("dataset")
    if not dataset:
        raise ConfigError(f"{args.start}/start.json names no training data; pass --dataset")
    train_data = eval_data = str(dataset)
    if args.select:
        from e2mc.data.datasets import build_dataset
        from e2mc.tuning.scoring import holdout_split

        split = out / "split.json"
        if not split.is_file():  # the held-out rule of `e2mc tune` (a split file of the TRAIN split only)
            holdout_split(split, dataset, build_dataset(dataset, "train").targets, args.holdout, args.holdout_seed)
        train_data = eval_data = str(split)
    sets = dict(parse_override(s) for s in args.sets)
    common = {
        "recipe": args.recipe,
        "model.init": str(start_model),
        "data.dataset": train_data,
        "data.num_workers": 0,
        "train.epochs": args.epochs,
        "optim.batch_size": args.batch_size,
        "train.device": args.device,
        **sets,
    }
    settings = {
        "start": str(args.start),
        "start_sha256": start_meta.get("sha256"),
        "recipe": args.recipe,
        "dataset": str(dataset),
        "train_data": train_data,
        "eval_data": eval_data,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "sets": sets,
        "select": args.select,
        "holdout": args.holdout if args.select else None,
        "protocols": list(args.protocols),
    }
    old = read_json(out / "settings.json")
    if old is not None and old != settings:
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        raise ConfigError(
            f"{out} holds arms run with other settings {diff}; all arms must share them: use another --out"
        )
    write_json(out / "settings.json", settings)
    t_train = time.perf_counter()
    for job in plan(args):
        run_one(job, common, log)
        if not args.select:  # last.pt is what is evaluated; epoch files are ~130 MB each at CIFAR scale
            for p in (job["dir"] / "checkpoints").glob("epoch_*.pt"):
                p.unlink()
    train_s = time.perf_counter() - t_train
    if args.no_eval:
        return None
    t_eval = time.perf_counter()
    per_label, arm_of, eval_seconds, runs = evaluate_all(args, eval_data, start_model, log)
    settings["_wall"] = {
        "train": round(train_s, 1),
        "evaluate": round(time.perf_counter() - t_eval, 1),
        "total": round(time.perf_counter() - t0, 1),
    }
    return report(args, per_label, arm_of, eval_seconds, runs, settings, log)


if __name__ == "__main__":
    main()
    sys.exit(0)
