"""The evaluation protocols: one registry, each protocol a small function registered once.

A protocol is ``run(ctx: Context) -> dict`` plus what it needs: training-split features
(``needs_train``), the projector's features besides the backbone's (``projector``), whether it uses
labels (``label_free``: the ONE label-free list, :data:`LABEL_FREE`, also the tune's), and which
evaluation seeds it uses (``seeds``: every seed, the first, or none). Its settings live in its
section of :class:`e2mc.evaluation.settings.EvalSettings` (``ctx.settings.<name>``). Heavy imports
happen inside the functions, so the registry is cheap to import (the CLI and the tune read it).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from e2mc.errors import ConfigError, DataError
from e2mc.evaluation.settings import EvalSettings


@dataclass(frozen=True)
class Protocol:
    name: str
    run: Callable[["Context"], dict]
    summary: str
    needs_train: bool = False  # features of the training split
    projector: bool = False  # the projector's features too (when the model has one)
    label_free: bool = False
    seeds: str = "none"  # "every" (one draw per seed) | "first" (seeds[0]) | "none" (deterministic)
    per_layer: bool = True  # runs on each selected layer's features (False: the model's own output only)


@dataclass
class Context:
    """What a protocol sees: the model, the two datasets, their features, the settings."""

    model: Any
    path: str | None  # the checkpoint file, when evaluating one
    train_ds: Any
    test_ds: Any
    train_f: Any  # FeatureSet of the training split (None unless a protocol needs it)
    test_f: Any
    settings: EvalSettings
    device: str
    spec: str  # the dataset spec ("custom" for a dataset pair)
    extract_kw: dict = field(default_factory=dict)  # extract_features' arguments (batch, device, cache)

    @property
    def first_seed(self) -> int:
        return int(self.settings.seeds[0])

    @functools.cached_property
    def run_config(self) -> dict | None:
        """The training config stored with the checkpoint (read once, when a protocol asks)."""
        return run_config(self.path)


def run_config(path) -> dict | None:
    """The training config of a checkpoint: its ``"config"``, else the run folder's ``config.yaml``
    next to ``checkpoints/``; None for other files and in-memory models."""
    if path is None:
        return None
    from pathlib import Path

    import yaml

    from e2mc.models.checkpoints import read_checkpoint

    try:
        obj, _ = read_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - no config only means "use the method's defaults"
        obj = None
    cfg = obj.get("config") if isinstance(obj, dict) else None
    yaml_path = Path(path).parent.parent / "config.yaml"
    if not isinstance(cfg, dict) and Path(path).parent.name == "checkpoints" and yaml_path.is_file():
        try:
            cfg = yaml.safe_load(yaml_path.read_text())
        except yaml.YAMLError:
            cfg = None
    return cfg if isinstance(cfg, dict) else None


PROTOCOLS: dict[str, Protocol] = {}


def register(name: str, summary: str, **kw) -> Callable:
    """Decorator: add ``fn`` to :data:`PROTOCOLS` under ``name`` (once)."""

    def deco(fn):
        if name in PROTOCOLS:
            raise ValueError(f"protocol {name!r} is registered twice")
        PROTOCOLS[name] = Protocol(name, fn, summary, **kw)
        return fn

    return deco


def get(names) -> list[Protocol]:
    """The protocols named, in the order given; ConfigError for an unknown name."""
    unknown = [p for p in names if p not in PROTOCOLS]
    if unknown:
        raise ConfigError(f"unknown protocol(s) {unknown}; choose from {', '.join(PROTOCOLS)}")
    return [PROTOCOLS[p] for p in names]


def seeds_used(protocols, seeds) -> dict[str, list[int]]:
    """Which evaluation seeds each protocol used: every seed (few-shot, semi-sup: one draw each),
    the first (linear probe split, fine-tuning, LiDAR's views, the decomposition) or none."""
    seeds = [int(s) for s in seeds]
    out = {}
    for p in protocols:
        use = PROTOCOLS[p].seeds if p in PROTOCOLS else "none"
        out[p] = seeds if use == "every" else seeds[:1] if use == "first" else []
    return out


@register("knn", "cosine kNN, temperature-weighted votes", needs_train=True)
def _knn(ctx: Context) -> dict:
    from e2mc.evaluation.knn import knn_classify

    s, tr, te = ctx.settings.knn, ctx.train_f, ctx.test_f
    xtr, xte = tr["backbone"], te["backbone"]
    if ctx.settings.standardize:  # with the training features' mean/std (evaluation.uar.standardize)
        from e2mc.evaluation.uar import standardize

        xtr, xte = standardize(xtr, xte)
    preds: dict = {}
    acc = knn_classify(xtr, tr.labels, xte, te.labels, ks=s.ks, temperature=s.temperature, predictions=preds)
    return {**{f"top1_k{k}": v for k, v in acc.items()}, **{f"uar_k{k}": _uar(preds[k], te.labels) for k in acc}}


def _uar(pred, labels) -> float:
    from e2mc.evaluation.uar import uar

    return uar(pred, labels)


@register("linear", "logistic regression, penalty chosen on held-out train", needs_train=True, seeds="first")
def _linear(ctx: Context) -> dict:
    return linear_result(ctx)


def linear_result(ctx: Context, predictions: dict | None = None) -> dict:
    """The ``linear`` protocol's result on ``ctx``; ``predictions`` gets the probe's predicted test
    labels (``linear_probe``'s ``predictions``), so ``e2mc tune`` reads per-image outcomes of ONE fit."""
    from e2mc.evaluation.linear import linear_probe

    s, tr, te = ctx.settings.linear, ctx.train_f, ctx.test_f
    res = linear_probe(
        tr["backbone"],
        tr.labels,
        te["backbone"],
        te.labels,
        weight_decays=s.weight_decays,
        val_fraction=s.val_fraction,
        seed=ctx.first_seed,
        max_iter=s.max_iter,
        solver=s.solver,
        streaming={"epochs": s.streaming_epochs, "batch_size": s.streaming_batch_size},
        predictions=predictions,
    )
    if res["selected_at_grid_edge"]:
        res["advice"] = grid_edge_advice(res["weight_decay"], s.weight_decays, "eval.linear.weight_decays")
    return res


def grid_edge_advice(chosen: float, grid, key: str) -> str:
    """One line: the chosen penalty is the grid's end; the exact ``--set`` that widens it."""
    grid = sorted(float(v) for v in grid)
    low = chosen <= grid[0]
    wider = ([chosen / 100, chosen / 10] + grid) if low else (grid + [chosen * 10, chosen * 100])
    text = ",".join(f"{v:g}" for v in wider)
    return (
        f"the chosen weight decay {chosen:g} is the grid's {'smallest' if low else 'largest'}: the best "
        f"may lie beyond it; widen the grid: --set {key}=[{text}]"
    )


@register("linear_finetune", "frozen backbone, augmented SGD probe (last epoch)", seeds="first", per_layer=False)
def _linear_finetune(ctx: Context) -> dict:
    from e2mc.evaluation.semisup import linear_probe_finetune

    st, s = ctx.settings, ctx.settings.linear_finetune
    return linear_probe_finetune(
        ctx.model,
        ctx.train_ds,
        ctx.test_ds,
        s.epochs,
        lr=s.lr,
        batch_size=st.batch_size,
        device=ctx.device,
        image_size=st.image_size,
        seed=ctx.first_seed,
    )


@register("fewshot", "k-shot logistic regression over seeded draws", needs_train=True, seeds="every")
def _fewshot(ctx: Context) -> dict:
    from e2mc.evaluation.fewshot import fewshot

    s, tr, te = ctx.settings.fewshot, ctx.train_f, ctx.test_f
    return fewshot(
        tr["backbone"],
        tr.labels,
        te["backbone"],
        te.labels,
        shots=s.shots,
        seeds=ctx.settings.seeds,
        weight_decay=s.weight_decay,
    )


@register("semisup", "fine-tuning with a fraction of the labels", seeds="every", per_layer=False)
def _semisup(ctx: Context) -> dict:
    from e2mc.evaluation.semisup import semisup

    st, s = ctx.settings, ctx.settings.semisup
    return semisup(
        ctx.model,
        ctx.train_ds,
        ctx.test_ds,
        fractions=s.fractions,
        seeds=st.seeds,
        epochs=s.epochs,
        lr_head=s.lr_head,
        lr_backbone=s.lr_backbone,
        batch_size=st.batch_size,
        device=ctx.device,
        image_size=st.image_size,
    )


@register("rankme", "effective rank of the embeddings", projector=True, label_free=True)
def _rankme(ctx: Context) -> dict:
    from e2mc import metrics

    return {n: metrics.rankme(ctx.test_f[n]) for n in ctx.test_f.features}


@register(
    "entropy",
    "E2MC's marginal entropy and covariance of the projector",
    projector=True,
    label_free=True,
    per_layer=False,
)
def _entropy(ctx: Context) -> dict:
    from e2mc import metrics

    if "projector" not in ctx.test_f.features:
        raise DataError("entropy needs a projector; this model has none (evaluate rankme/uniformity instead)")
    transform, source = entropy_transform(ctx.model, ctx.run_config, ctx.settings.entropy.transform)
    z = ctx.test_f["projector"]
    mapped = metrics.get_mapped(z[:, :4], transform)
    return {
        "entropy": metrics.marginal_entropy(z, transform),
        "covariance": metrics.e2mc_covariance(z, transform),
        "transform": transform,
        "transform_source": source,
        "marginals_sample": [[round(float(v), 4) for v in col[:1000]] for col in mapped.T],
    }


def entropy_transform(model, run_config: dict | None, chosen: str | None = None) -> tuple[str, str]:
    """The box transform of the entropy protocol and where it came from: ``eval.entropy.transform``
    when set, else the run's training ``addon.transform`` (what its monitor logged), else the
    method's default (a checkpoint without a run config, or a run whose add-on set none)."""
    from e2mc.config import E2MC_DEFAULTS

    if chosen:
        return chosen, "eval.entropy.transform"
    addon = (run_config or {}).get("addon") or {}
    if addon.get("transform"):
        return str(addon["transform"]), "the run's addon.transform (its training config)"
    method = getattr(model, "method", None) or ""
    if method in E2MC_DEFAULTS:
        return E2MC_DEFAULTS[method][2], f"the method's default ({method}; the checkpoint holds no addon.transform)"
    return "sigmoid", "e2mc's default (the model names no method and no run config)"


@register("uniformity", "Wang & Isola's uniformity", projector=True, label_free=True)
def _uniformity(ctx: Context) -> dict:
    from e2mc import metrics

    return {n: metrics.uniformity(ctx.test_f[n][:4096]) for n in ctx.test_f.features}


@register("spectrum", "singular values of the embeddings", projector=True, label_free=True)
def _spectrum(ctx: Context) -> dict:
    from e2mc import metrics

    return {n: metrics.singular_values(ctx.test_f[n]).tolist() for n in ctx.test_f.features}


@register(
    "lidar",
    "LiDAR: rank of the LDA matrix of augmented surrogate classes",
    label_free=True,
    seeds="first",
    per_layer=False,
)
def _lidar(ctx: Context) -> dict:
    from e2mc import metrics
    from e2mc.evaluation.surrogate import augmented_embeddings

    st, s = ctx.settings, ctx.settings.lidar
    emb = augmented_embeddings(
        ctx.model,
        ctx.test_ds,
        n_images=s.images,
        n_views=s.views,
        image_size=st.image_size,
        device=ctx.device,
        batch_size=st.batch_size,
        seed=ctx.first_seed,
    )
    res: dict = {name: metrics.lidar(z, s.views) for name, z in emb.items()}
    res.update(images=len(next(iter(emb.values()))) // s.views, views=s.views)
    return res


@register("alpha_req", "power-law decay of the covariance spectrum", projector=True, label_free=True)
def _alpha_req(ctx: Context) -> dict:
    from e2mc import metrics

    fits = {n: metrics.alpha_req(ctx.test_f[n]) for n in ctx.test_f.features}
    res: dict = {n: f["alpha"] for n, f in fits.items()}
    res.update({f"r2_{n}": f["r2"] for n, f in fits.items()})
    res.update({f"ranks_{n}": f"{f['k_min']}-{f['k_max']}" for n, f in fits.items()})
    return res


@register(
    "decompose",
    "the linear probe's test error as approximation + usability + probe and encoder generalisation",
    needs_train=True,
    seeds="first",
)
def _decompose(ctx: Context) -> dict:
    from e2mc.evaluation.decompose import risk_decomposition

    s, tr, te = ctx.settings.decompose, ctx.train_f, ctx.test_f
    seen, seen_note = seen_images(ctx)
    ref_x = None if s.reference is None else reference_features(ctx, s.reference)
    res = risk_decomposition(
        tr["backbone"],
        tr.labels,
        te["backbone"],
        te.labels,
        weight_decays=s.weight_decays,
        subset=s.subset,
        seen=seen,
        reference_x=ref_x,
        val_fraction=s.val_fraction,
        seed=ctx.first_seed,
        epochs=s.epochs,
        min_steps=s.min_steps,
        batch_size=s.batch_size,
    )
    res["seen"] = seen_note
    if s.reference is not None:
        res["reference"] = s.reference if isinstance(s.reference, str) else type(s.reference).__name__
    return res


def seen_images(ctx: Context):
    """(indices of the training split the encoder saw in SSL training or None for all, one line
    saying which): the run's ``data.dataset``/``data.split``/``data.limit`` (for a continued run,
    the continuation's), compared with the evaluated training split."""
    data = (ctx.run_config or {}).get("data") or {}
    where = f"{ctx.spec} / {ctx.settings.train_split}"
    if not data.get("dataset"):
        return None, (
            f"unknown (the checkpoint holds no run config): every image of {where} is taken as seen in SSL "
            "training; give the run's checkpoint to have it checked"
        )
    trained = f"{data['dataset']} / {data.get('split') or 'train'}"
    same_data = str(data["dataset"]) == ctx.spec or (
        os.path.exists(str(data["dataset"])) and os.path.realpath(str(data["dataset"])) == os.path.realpath(ctx.spec)
    )
    if not (same_data and (data.get("split") or "train") == ctx.settings.train_split):
        return None, (
            f"the encoder was trained on {trained}, not on the evaluated {where}: the subset was not seen in SSL "
            "training, so encoder generalisation also measures the shift between the two"
        )
    limit = data.get("limit")
    if limit:
        from e2mc.data.datasets import first_per_class

        seen = first_per_class(list(ctx.train_ds.targets), int(limit))
        return seen, f"{len(seen)} images of {where} (the run's data.limit={limit}), the subset drawn from them"
    return None, f"every image of {where} (the run's training data): the subset drawn from them"


def reference_features(ctx: Context, reference):
    """The supervised reference encoder's backbone features of the training split (cached like the
    SSL model's; ``reference``: a checkpoint file, a name such as ``timm:resnet18``, or a model)."""
    from e2mc.evaluation.features import extract_features, file_sha256

    model, digest = reference, None
    if isinstance(reference, str):
        from e2mc.models.checkpoints import load_model

        model = load_model(reference)[0]
        digest = file_sha256(reference) if os.path.isfile(reference) else None
    kw = {**ctx.extract_kw, "which": ("backbone",), "model_hash": digest}
    return extract_features(model, ctx.train_ds, **kw)["backbone"]


LABEL_FREE = tuple(n for n, p in PROTOCOLS.items() if p.label_free)
