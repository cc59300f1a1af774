"""``TuneSpec``: what ``e2mc.tune`` is asked to do, one field per ``e2mc tune`` option; ``Plan``: what
the checks and the held-out split make of it (the tune's working state)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from e2mc.tuning import scoring
from e2mc.tuning.space import SearchSpace


@dataclass
class TuneSpec:
    """What to tune: everything ``tune`` takes besides the log (``e2mc tune``'s options, one field each).

    Fields:
        checkpoint, dataset, out: the start checkpoint, the dataset spec, the output folder.
        space: a :class:`SearchSpace`, a YAML path, a dict, or None (``tuning.space.DEFAULT_SPACE``).
        budget: epochs of training data for all probes together (None: the cheapest schedule, the
            most rungs; ``"full"``: the full grid, every probe to the space's epochs).
        select: ``"heldout"`` (kNN@20 on the held-out part) or ``"label-free:<metric>"``.
        workers: probe processes at once (None: one per 2 cores); ``threads`` torch threads each.
        confirm: N > 0: also run the chosen setting and base-only with N training seeds on the full
            train split and evaluate them once on the test split (paired 95% intervals).
        recipe: the continue recipe/config every probe starts from (None: e2mc's defaults).
        holdout: held-out TRAIN images (None: with labels, the size at which a paired kNN@20 difference
            of ``target_diff`` points is detectable (``tuning.power``'s pilot), at most ``holdout_cap``
            of the train split; without labels 10%, at most 5,000).
        target_diff: kNN@20 points the paired comparison should detect (80% power, 5% level).
        holdout_cap: the held-out part's largest fraction of the train split.
        pilot_steps: steps of the power pilot's two base-only probes (None: the first rung's, lengthened
            until base-only's features move by ``min_move``).
        final_seeds: training seeds of the leaders and base-only at the last rung (1: no second seed).
        min_move: the relative change of base-only's held-out RankMe the first rung must reach.
        train_images: the probes train on this many of the rest (stratified, seeded; None: all).
        label_free: the label-free metrics scored besides the rule's (``scoring.LABEL_FREE``).
        sets: extra config overrides for every probe and confirm run.
        eval_precision: feature extraction of the probes' scoring, ``"fp32"`` or ``"bf16"`` (about
            2x faster on CPU; the confirmation always extracts in the evaluate default).
        lidar_images: LiDAR's surrogate classes (held-out images, each augmented 8 times).
    """

    checkpoint: str
    dataset: str
    out: str | Path | None = None
    space: object = None
    budget: float | str | None = None
    select: str = "heldout"
    workers: int | None = None
    threads: int | None = None
    confirm: int = 0
    recipe: str | None = None
    method: str | None = None
    holdout: int | None = None
    train_images: int | None = None
    seed: int = 0
    eta: int = 3
    label_free: Sequence[str] = scoring.LABEL_FREE
    sets: dict = field(default_factory=dict)
    device: str | None = None
    confirm_epochs: float | None = None
    root: str | None = None
    eval_batch_size: int = 256
    eval_precision: str = "fp32"
    lidar_images: int = 500
    target_diff: float = 0.5
    holdout_cap: float = 0.2
    pilot_steps: int | None = None
    min_move: float = 0.05
    final_seeds: int = 2


@dataclass
class Plan:
    """What the checks and the split made of a :class:`TuneSpec` (the tune's working state)."""

    space: SearchSpace
    rule: str
    label_free: tuple
    method: str | None
    workers: int
    threads: int | None
    base: dict  # config overrides every probe and confirm run starts from
    batch: int
    labels: bool  # the train split has labels
    n: int = 0  # train images
    n_hold: int = 0
    n_probe: int = 0
    split: Path | None = None
    rungs: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    bpe: int = 0  # batches per epoch of the probes' data
    power: dict | None = None  # tuning.power.pilot's result (held-out selection with labels)
    ref: str | None = None  # the base-only probe every other is compared with
