"""``e2mc evaluate``, ``e2mc compare`` and ``e2mc report``: thin wrappers around
``e2mc.evaluation.api.evaluate``, ``e2mc.evaluation.compare.compare`` and ``e2mc.report.write_report``."""

from __future__ import annotations

import argparse
import json
import sys

from e2mc.commands import add_command
from e2mc.evaluation.protocols import LABEL_FREE, PROTOCOLS
from e2mc.evaluation.settings import keys

DEFAULT_PROTOCOLS = "knn,linear,fewshot,rankme"


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _ints(s: str) -> list[int]:
    try:
        return [int(x) for x in _csv(s)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        default=None,
        help="evaluation dataset spec (digits, cifar10, a folder, ...); default: the run's training data "
        "(a run folder or its checkpoint), required otherwise",
    )
    p.add_argument(
        "--protocols",
        type=_csv,
        default=_csv(DEFAULT_PROTOCOLS),
        help=f"comma-separated: {','.join(PROTOCOLS)} (label-free: {', '.join(LABEL_FREE)})",
    )
    p.add_argument(
        "--seeds",
        type=_ints,
        default=[0, 1, 2],
        help="comma-separated evaluation seeds (default 0,1,2): few-shot and semi-sup draw once per "
        "seed; the linear probe, fine-tuning and LiDAR use the first; kNN and label-free metrics "
        "none (JSON: meta.seeds_used)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass when extracting features")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="resize images to this side in pixels (default: the dataset's native size, e.g. 32 for "
        "CIFAR, 224 for ImageNet)",
    )
    p.add_argument("--epochs", type=int, default=10, help="epochs for linear_finetune and semisup")
    p.add_argument("--cache-dir", default=None, help="feature cache (default $E2MC_CACHE/features)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    p.add_argument(
        "--feature-dtype",
        choices=("float16", "float32"),
        default="float16",
        help="how frozen features are stored, in the cache and in memory",
    )
    p.add_argument("--json", action="store_true", help="print JSON (indented) instead of a table")
    p.add_argument(
        "--reference",
        default=None,
        metavar="ENCODER",
        help="decompose: a supervised encoder of the same architecture (timm:resnet18, torchvision:resnet50, a "
        "file) for the approximation term; without it approximation is merged into usability",
    )
    p.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="eval.KEY=VALUE",
        help="any evaluation setting, YAML value, repeatable, applied after the other flags (e.g. "
        "--set eval.linear.weight_decays=[1e-6,1e-5,1e-4] --set eval.knn.temperature=0.1); keys, each after "
        "eval.: " + ", ".join(keys()),
    )
    p.add_argument(
        "--layers",
        default=None,
        metavar="LAYERS",
        help="evaluate intermediate layers too, one forward pass: all, names (layer1,layer3 for ResNets; "
        "blocks.3,blocks.11,final for ViTs) or indices (-1: the last); one table per protocol with a row "
        "per layer (default: the backbone's output only)",
    )
    p.add_argument(
        "--token-pooling",
        choices=("cls", "mean", "cls+mean"),
        default="cls",
        help="how a transformer layer's tokens become one vector: the CLS token, the mean of the patch "
        "tokens (registers excluded), or both concatenated",
    )
    p.add_argument(
        "--ks",
        type=_ints,
        default=[10, 20, 100, 200],
        help="comma-separated kNN neighbour counts (default 10,20,100,200; clipped to the training size)",
    )
    p.add_argument(
        "--linear-solver",
        choices=("auto", "lbfgs", "streaming"),
        default="auto",
        help="linear probe solver: exact full-batch L-BFGS, mini-batch heads (memory flat in N), "
        "or auto (L-BFGS while its memory estimate is <= 1 GiB)",
    )
    p.add_argument("--test-split", default="test", help="split to score (default test; e.g. val for ImageNet)")
    p.add_argument(
        "--data-root",
        default=None,
        help="folder holding cifar10/cifar100/stl10/imagenet (default $E2MC_CACHE/datasets/<name>)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="let torchvision download cifar10/cifar100/stl10 into the data root if missing",
    )
    p.add_argument(
        "--lidar-images",
        type=int,
        default=500,
        metavar="N",
        help="LiDAR: surrogate classes = N test images (default 500) ...",
    )
    p.add_argument(
        "--lidar-views",
        type=int,
        default=8,
        metavar="Q",
        help="... each augmented Q times with the model's training views (default 8)",
    )


def register(subparsers) -> None:
    """Add the ``evaluate``, ``compare`` and ``report`` sub-commands."""
    p = add_command(
        subparsers,
        "evaluate",
        help="evaluate one checkpoint (kNN, linear, few-shot, RankMe, ...)",
        description="Evaluate one checkpoint (any supported layout, or a run folder) on a dataset with the\n"
        "chosen protocols. Features are extracted once and cached. Prints one block per protocol\n"
        "(accuracies in %), or with --json the full results (per-seed values, the probe's\n"
        "penalty and convergence, meta.seeds_used: which evaluation seeds each protocol used).",
        examples=[
            "e2mc evaluate runs/e2mc --dataset digits --protocols knn,linear,rankme",
            "e2mc evaluate resnet50.pth --dataset cifar10 --data-root /data/cifar10 --download --json",
            "e2mc evaluate ckpt.pth --dataset imagenet --test-split val --protocols knn,linear",
            "e2mc evaluate runs/e2mc --dataset cifar10 --protocols linear --set eval.linear.weight_decays=[1e-6,1e-5]",
            "e2mc evaluate runs/e2mc --dataset cifar10 --protocols decompose --reference torchvision:resnet18",
            "e2mc evaluate runs/e2mc --dataset cifar10 --protocols knn,linear --layers all",
        ],
    )
    p.add_argument("checkpoint", help="checkpoint file, run folder, or a name (`e2mc zoo`, torchvision:ARCH, ...)")
    _common(p)
    p.set_defaults(func=_evaluate)

    p = add_command(
        subparsers,
        "compare",
        help="evaluate several checkpoints with the same protocols and seeds",
        description="Evaluate every arm with the same protocols, dataset and evaluation seeds and print a\n"
        "table: per arm mean ± std (n), where n counts the arm's checkpoints (training seeds),\n"
        "and each arm minus the first with a 95% t-interval (paired by training seed, else\n"
        "Welch). With --out it writes comparison.json, comparison.md and the report\n"
        "(report.md, report.html, PNGs): the one way to make a report.",
        examples=[
            "e2mc compare base=runs/base e2mc=runs/e2mc --dataset digits --out runs/cmp",
            "e2mc compare base=b_s0,b_s1,b_s2 e2mc=e_s0,e_s1,e_s2 --dataset cifar10 --protocols knn,linear",
            "e2mc compare a.pth b.pth --names vicreg,vicreg+e2mc --json",
        ],
    )
    p.add_argument("arms", nargs="+", help="checkpoint, run folder, or name=ckpt1,ckpt2 (several training seeds)")
    p.add_argument("--names", type=_csv, default=None, help="comma-separated arm names (default: from the arms)")
    p.add_argument(
        "--out", default=None, help="folder for comparison.json, comparison.md and the report (default: print only)"
    )
    _common(p)
    p.set_defaults(func=_compare)

    p = add_command(
        subparsers,
        "report",
        help="regenerate the report of `compare --out` from its comparison.json",
        description="Regenerate report.md, report.html and the PNGs from a comparison.json written by\n"
        "`e2mc compare --out DIR` (the same function compare used), in place by default.\n"
        "Run folders given after it replace the ones inferred from the checkpoints' paths;\n"
        "run folders alone give a report of training curves and runs.",
        examples=[
            "e2mc report runs/cmp/comparison.json",
            "e2mc report runs/cmp/comparison.json runs/base runs/e2mc --out runs/report",
            "e2mc report runs/base runs/e2mc --out runs/curves",
        ],
    )
    p.add_argument(
        "inputs",
        nargs="+",
        help="comparison.json written by `e2mc compare --out DIR` and/or run folders "
        "(default: the run folders the compared checkpoints lie in)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default: the folder of the comparison.json, i.e. regenerate in place)",
    )
    p.set_defaults(func=_report)


def _settings(args):
    """The EvalSettings of the command line: the flags, then every ``--set eval.KEY=VALUE``."""
    from e2mc.evaluation.settings import EvalSettings

    flags = {
        "eval.seeds": args.seeds,
        "eval.device": args.device,
        "eval.batch_size": args.batch_size,
        "eval.image_size": args.image_size,
        "eval.cache_dir": args.cache_dir,
        "eval.use_cache": not args.no_cache,
        "eval.linear_finetune.epochs": args.epochs,
        "eval.semisup.epochs": args.epochs,
        "eval.knn.ks": args.ks,
        "eval.test_split": args.test_split,
        "eval.root": args.data_root,
        "eval.download": args.download,
        "eval.lidar.images": args.lidar_images,
        "eval.lidar.views": args.lidar_views,
        "eval.linear.solver": args.linear_solver,
        "eval.feature_dtype": args.feature_dtype,
        "eval.decompose.reference": args.reference,
        "eval.layers": args.layers,
        "eval.token_pooling": args.token_pooling,
    }
    return EvalSettings().with_overrides(flags).with_overrides(args.settings)


def _convergence(v: dict) -> str:
    return ("converged" if v["converged"] else "NOT converged") + f" (max |grad| {v['grad_max']:.1e})"


def _fmt(v, metric: str = "") -> str:
    from e2mc.evaluation.compare import is_accuracy
    from e2mc.evaluation.stats import decimals_for, fmt_number

    if isinstance(v, float) and is_accuracy(metric) and ("top1" in metric or "uar" in metric):  # as compare: %
        return f"{fmt_number(100 * v, 2)} %"
    if isinstance(v, float):
        return fmt_number(v, decimals_for(v))
    if isinstance(v, dict) and "converged" in v and "grad_max" in v:  # linear probe: the refit
        return _convergence(v) + (f", {v['iterations']} iterations" if "iterations" in v else "")
    if isinstance(v, dict) and v and all(isinstance(x, dict) and "converged" in x for x in v.values()):
        return "; ".join(f"wd {k:g}: {_convergence(x)}" for k, x in v.items())  # per penalty
    if isinstance(v, list) and v and isinstance(v[0], (int, float)) and len(v) <= 5:
        return "[" + ", ".join(f"{x:.4f}" if isinstance(x, float) else str(x) for x in v) + "]"
    if isinstance(v, (list, dict)):
        return f"<{len(v)} items>"
    return str(v)


def _evaluate(args) -> int:
    from e2mc.evaluation.api import evaluate

    res = evaluate(args.checkpoint, args.dataset, args.protocols, _settings(args))
    if args.json:
        print(json.dumps(res, indent=2, default=float))
        return 0
    from e2mc.evaluation.compare import metric_values
    from e2mc.evaluation.layertable import evaluate_tables

    m = res.get("meta") or {}
    split = f"{m.get('train_split')} {m.get('n_train')}, {m.get('test_split')} {m.get('n_test')}"
    own = "; the run's own training data, --dataset to choose another" if m.get("dataset_default") else ""
    print(f"dataset: {m.get('dataset')} ({split}{own})")
    if m.get("network") == "teacher":
        print("network: the momentum teacher's (eval.network=teacher)")
    elif m.get("has_teacher"):
        print(
            "network: the online one (the student); --set eval.network=teacher scores the teacher, as DINO's eval does"
        )
    for proto, metrics in res.items():
        if proto == "meta" or "by_layer" in metrics:
            continue
        print(f"[{proto}]")
        if proto == "decompose":
            _print_decompose(metrics)
            continue
        for k, v in metrics.items():
            if k not in ("per_seed", "subsets", "marginals_sample", "indices"):
                print(f"  {k:32s} {_fmt(v, f'{proto}/{k}')}")
    tables = evaluate_tables(metric_values(res))
    if tables:
        print(tables, end="")
    return 0


def _print_decompose(r: dict) -> None:
    """The four components in % (they sum to the test error), each with its definition."""
    from e2mc.evaluation.decompose import COMPONENTS

    print(f"  {'test error (train->test)':32s} {100 * r['test_error']:.2f} % = the sum of:")
    for k in COMPONENTS:
        value = f"{100 * r[k]:+.2f} %" if k in r else "merged into usability"
        print(f"  {k:32s} {value:>10s}  {r['definitions'][k]}")
    if "approximation_note" in r:
        print(f"  {'note':32s} {r['approximation_note']}")
    print(f"  {'dominant':32s} {r['dominant']}")
    print(f"  {'seen in SSL training':32s} {r['seen']}")
    names = {"train_train": "train->train", "comp_sub": "comp->sub", "train_test": "train->test"}
    names["reference_train_train"] = "reference train->train"
    fits = [f"{names[k]} {100 * v['error']:.2f} % (wd {v['weight_decay']:g})" for k, v in r["fits"].items()]
    print(f"  {'fits':32s} {'; '.join(fits)}")


def _compare(args) -> int:
    from pathlib import Path

    from e2mc.errors import ConfigError
    from e2mc.evaluation.compare import compare

    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a file; give a folder for comparison.json and the report")
    res = compare(args.arms, names=args.names, dataset=args.dataset, protocols=args.protocols, settings=_settings(args))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        from e2mc.fileio import atomic_write_text
        from e2mc.report import write_report
        from e2mc.train.run import write_error

        res.to_json(out / "comparison.json")
        atomic_write_text(out / "comparison.md", res.to_markdown(), error=write_error)
        write_report(out, res)  # the one report; `e2mc report OUT/comparison.json` regenerates it
        print(f"wrote {out}: comparison.json, comparison.md, report.md, report.html and the figures", file=sys.stderr)
    from e2mc.report.html import guard_lines

    for line in guard_lines(res):  # a run that collapsed and was rolled back: said here, not only in the report
        print(line, file=sys.stderr)
    print(res.to_json() if args.json else res.to_markdown())
    return 0


def _report(args) -> int:
    from pathlib import Path

    from e2mc.errors import DataError
    from e2mc.evaluation.compare import ComparisonResult
    from e2mc.report import write_report

    jsons = [p for p in args.inputs if p.endswith(".json")]
    if args.out is None:
        if not jsons:
            raise DataError("--out is needed when no comparison.json is given: `e2mc report RUN_DIR ... --out DIR`")
        args.out = str(Path(jsons[0]).parent)  # regenerate the report next to its comparison.json
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise DataError(f"--out {args.out} is a file; give a folder for report.md/report.html")
    comparison, runs = None, []
    for item in args.inputs:
        p = Path(item)
        if p.is_file() and p.suffix == ".json":
            if comparison is not None:
                raise DataError("pass at most one comparison JSON to `e2mc report`")
            comparison = ComparisonResult.from_json(str(p))
        elif p.is_dir():
            runs.append(p)
        elif not p.exists():
            raise DataError(
                f"{item} does not exist (neither a comparison .json nor a run folder); pass the "
                "comparison.json written by `e2mc compare --out DIR` and/or run folders"
            )
        else:
            raise DataError(
                f"{item} is neither a comparison .json nor a run folder; pass the comparison.json "
                "written by `e2mc compare --out DIR` and/or run folders"
            )
    paths = write_report(args.out, comparison, runs=runs)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0
