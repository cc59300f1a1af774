"""``e2mc tune``: a thin wrapper around ``e2mc.tuning.api.tune``."""

from __future__ import annotations

import argparse

from e2mc.config import METHOD_NAMES

DESCRIPTION = """\
Find which add-on (none, e2mc, vc, uniformity, mmcr) and which weights / LR improve THIS checkpoint,
without touching its test split. Every point of the search space is a short, resumable `continue`
run ("probe") on the train split minus a seeded, stratified held-out part; successive halving keeps
the best third of the probes after each rung and resumes them for longer, within --budget epochs.
Before the search, two base-only pilot probes (training seeds differ) measure how often per-image
kNN outcomes flip; from that the held-out size is chosen so a paired difference of --target-diff
kNN points is detectable (80% power, 5% level; at most --holdout-cap of the train split), and the
minimum detectable difference is printed. Probes are scored on the SAME held-out images (kNN@20 per
image, linear probe per image) and by label-free metrics (RankMe, E2MC entropy, LiDAR, alpha-ReQ); every
rung compares each probe to base-only by a paired 95% interval (McNemar) of kNN@20, which selects, and of
the linear probe, a secondary check; base-only and every probe that
cannot be told from the leader advance; the chosen setting is the best add-on whose interval to
base-only is above zero, else base-only with "no probe is distinguishable". The Kendall tau of each label-free metric against held-out kNN@20
says whether label-free selection can be trusted on this data. Writes OUT/tune.{json,md,html};
rerunning the same command resumes (finished probes are skipped). --confirm N then runs the chosen
setting and base-only with N training seeds on the full train split and evaluates them once on the
test split, with paired 95% intervals.

space.yaml (every key optional; these are the defaults):
  addons: [none, e2mc, vc, uniformity, mmcr]
  e2mc: {entropy_weight: {log: [1, 100, 3]}, cov_weight: {log: [1, 10000, 3]}, transform: [null]}
  lr: {relative: [0.1, 0.316, 1]}   # multiples of the recipe's LR (or a list of LRs; null = the recipe's)
  epochs: 2         # epochs of the longest probe (not given: --confirm-epochs when set)
  set: {}           # overrides for every probe, e.g. {optim.batch_size: 128}"""

EXAMPLES = [
    "e2mc tune model.safetensors --dataset digits --out tune_digits",
    "e2mc tune benchmarks/starts/cifar10_vicreg_r18/model.safetensors --dataset /data/cifar10 "
    "--recipe cifar10_vicreg_e2mc --space space.yaml --holdout 5000 --train-images 10000 --confirm 3 --out tune_cifar",
    "e2mc tune model.safetensors --dataset digits --select label-free:rankme --out tune_lf",
]


def _budget(s: str):
    if s == "full":
        return s
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budget takes a number of epochs or 'full', got {s!r}") from None


def register(sub) -> None:
    """Add the ``tune`` parser."""
    from e2mc.commands import add_command

    p = add_command(
        sub,
        "tune",
        help="find the add-on and weights that improve this checkpoint (held-out, no test data)",
        description=DESCRIPTION,
        examples=EXAMPLES,
    )
    p.add_argument("checkpoint", help="checkpoint file to continue (any layout `e2mc continue` reads)")
    p.add_argument(
        "--dataset", required=True, help="dataset spec (its train split is probed; test only with --confirm)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="tune folder (probes/, split.json, tune.json/md/html)")
    p.add_argument("--space", metavar="YAML", help="search space file (default: the space shown below)")
    p.add_argument(
        "--budget",
        type=_budget,
        default=None,
        metavar="EPOCHS",
        help="epochs of probe training in all (default: the cheapest halving schedule; 'full': the full grid)",
    )
    p.add_argument(
        "--select",
        default="heldout",
        metavar="RULE",
        help="heldout (kNN@20 on the held-out part) or label-free:<rankme|entropy|lidar|alpha_req>",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="probes trained at once, in separate processes (default: one per 2 CPU cores)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads per probe process (default: cores / workers)"
    )
    p.add_argument(
        "--confirm",
        type=int,
        default=0,
        metavar="N",
        help="then run the chosen setting and base-only with N seeds; evaluate once on the test split",
    )
    p.add_argument(
        "--confirm-epochs", type=float, default=None, help="epochs of the confirm runs (default: the space's)"
    )
    p.add_argument("--recipe", metavar="NAME_OR_YAML", help="continue recipe or config every probe starts from")
    p.add_argument("--method", choices=METHOD_NAMES, help="SSL method (default: the checkpoint's)")
    p.add_argument(
        "--holdout",
        type=int,
        default=None,
        metavar="N",
        help="held-out TRAIN images for scoring (default: enough to detect --target-diff, at most "
        "--holdout-cap of the train split; label-free selection: 10%%, at most 5000)",
    )
    p.add_argument(
        "--target-diff",
        type=float,
        default=0.5,
        metavar="POINTS",
        help="paired kNN@20 difference to base-only the held-out size should detect (80%% power, 5%% level)",
    )
    p.add_argument(
        "--holdout-cap",
        type=float,
        default=0.2,
        metavar="FRACTION",
        help="largest fraction of the train split held out for scoring",
    )
    p.add_argument(
        "--pilot-steps",
        type=int,
        default=None,
        metavar="N",
        help="steps of the two base-only pilot probes that measure per-image noise (default: the first rung's, "
        "lengthened until --min-move)",
    )
    p.add_argument(
        "--final-seeds",
        type=int,
        default=2,
        metavar="N",
        help="training seeds of the leaders and base-only at the last rung; chosen only if above base-only with each",
    )
    p.add_argument(
        "--min-move",
        type=float,
        default=0.05,
        metavar="FRACTION",
        help="the first rung lasts until base-only's held-out RankMe moved by this fraction from the start's",
    )
    p.add_argument(
        "--train-images",
        type=int,
        default=None,
        metavar="N",
        help="the probes train on N of the remaining train images (stratified; default: all of them)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split and the probes")
    p.add_argument("--eta", type=int, default=3, help="successive halving: keep 1/eta per rung (default 3)")
    p.add_argument(
        "--eval-precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="feature extraction when scoring probes (bf16: ~2x faster on CPU; confirm stays fp32)",
    )
    p.add_argument(
        "--lidar-images",
        type=int,
        default=500,
        metavar="N",
        help="LiDAR's surrogate classes: N held-out images x 8 augmentations (default 500)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the recipe's)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every probe and confirm run (repeatable)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the tune; print the chosen setting and where the table is."""
    from e2mc.config import parse_override
    from e2mc.tuning.api import TuneSpec, tune

    spec = TuneSpec(
        args.checkpoint,
        args.dataset,
        out=args.out,
        space=args.space,
        budget=args.budget,
        select=args.select,
        workers=args.workers,
        threads=args.threads,
        confirm=args.confirm,
        recipe=args.recipe,
        method=args.method,
        holdout=args.holdout,
        train_images=args.train_images,
        seed=args.seed,
        eta=args.eta,
        sets=dict(parse_override(s) for s in args.overrides),
        device=args.device,
        confirm_epochs=args.confirm_epochs,
        eval_precision=args.eval_precision,
        lidar_images=args.lidar_images,
        target_diff=args.target_diff,
        holdout_cap=args.holdout_cap,
        pilot_steps=args.pilot_steps,
        min_move=args.min_move,
        final_seeds=args.final_seeds,
    )
    res = tune(spec, log=_progress)  # progress on stderr, as continue's; the result below on stdout, once
    print(f"chosen: {res['chosen']['label']}  {res['chosen']['overrides']}")
    print(f"verdict: {res['verdict']}")
    if res.get("confirm"):
        print(res["confirm"]["verdict"])
    print(f"{args.out}/tune.md")
    return 0


def _progress(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)
