"""``evaluate``: one call from a checkpoint (or model) to a dict of evaluation results.

The evaluation dataset is independent of the dataset the model was trained on (transfer is just
another ``dataset`` argument). Results: ``{protocol: {metric: value, ...}}``; seeded protocols
(``fewshot``, ``semisup``) also carry ``"per_seed": {metric: [value per seed]}`` and ``"seeds"``.
Deterministic protocols (``knn``, ``linear`` with its selection split seeded by ``seeds[0]``,
``rankme``, ``entropy``, ``uniformity``, ``spectrum``, ``alpha_req``, and ``lidar`` with its
images and augmentations seeded by ``seeds[0]``) give one value each.

Example:
    >>> res = evaluate("run/checkpoints/last.pt", "digits", protocols=("knn", "rankme"))  # doctest: +SKIP
    >>> res["knn"]["top1_k20"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Sequence

from e2mc.config import E2MC_DEFAULTS
from e2mc.errors import ConfigError, DataError

PROTOCOLS = (
    "knn",
    "linear",
    "linear_finetune",
    "fewshot",
    "semisup",
    "rankme",
    "entropy",
    "uniformity",
    "spectrum",
    "lidar",
    "alpha_req",
)
_LABEL_FREE = {"entropy", "uniformity", "rankme", "spectrum", "alpha_req"}


def _load(checkpoint_or_model):
    if isinstance(checkpoint_or_model, (str, os.PathLike)):
        from e2mc.models.checkpoints import load_model, resolve_checkpoint_path

        path = str(checkpoint_or_model)
        if os.path.isdir(path):  # a run folder; a folder of runs (the demo's) gets them named
            path = str(resolve_checkpoint_path(path))
        if not os.path.exists(path):
            if ":" in path and not os.path.dirname(path):  # a hub name such as random:resnet_mini
                return load_model(path)[0], None
            raise DataError(f"checkpoint {path} does not exist; pass a checkpoint file or a run folder")
        return load_model(path)[0], path
    return checkpoint_or_model, None


def _datasets(dataset, train_split, test_split, image_size, root=None, download=False):
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        train, test, spec = dataset[0], dataset[1], "custom"
    elif not isinstance(dataset, (str, os.PathLike)):
        raise ConfigError("dataset must be a spec string (e.g. 'digits', 'cifar10', a folder) or a (train, test) pair")
    else:
        from e2mc.data.datasets import build_dataset

        kw = dict(image_size=image_size, root=root, download=download)
        train, test, spec = (
            build_dataset(str(dataset), train_split, **kw),
            build_dataset(str(dataset), test_split, **kw),
            str(dataset),
        )
    a, b = list(getattr(train, "classes", None) or []), list(getattr(test, "classes", None) or [])
    if a and b and a != b:  # the same index must mean the same class in both splits
        i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        first = f"{a[i] if i < len(a) else None!r} vs {b[i] if i < len(b) else None!r}"
        raise DataError(
            f"the {train_split} and {test_split} datasets have different class lists ({len(a)} vs "
            f"{len(b)} classes; index {i} is {first}), so their labels disagree; build both with one "
            "class list (same names, same order)"
        )
    return train, test, spec


def evaluate(
    checkpoint_or_model,
    dataset="digits",
    *,
    train_split: str = "train",
    test_split: str = "test",
    protocols: Sequence[str] = ("knn", "linear", "fewshot", "rankme"),
    seeds: Sequence[int] = (0, 1, 2),
    device: str | None = None,
    batch_size: int = 256,
    image_size: int | None = None,
    cache_dir: str | None = None,
    ks: Sequence[int] = (10, 20, 100, 200),
    shots: Sequence[int] = (1, 5, 10, 25),
    epochs: int = 10,
    use_cache: bool = True,
    root: str | None = None,
    download: bool = False,
    lidar_images: int = 500,
    lidar_views: int = 8,
    linear_solver: str = "auto",
    feature_dtype: str = "float16",
    amp_dtype=None,
) -> dict:
    """Evaluate a checkpoint file, run folder or in-memory ``SSLModel`` with the given protocols.

    Args:
        dataset: spec for ``e2mc.data.build_dataset`` (any dataset: transfer evaluation), or a
            ``(train_dataset, test_dataset)`` pair of datasets yielding ``(uint8 image, label)``.
        protocols: names from ``PROTOCOLS``.
        seeds: draws for ``fewshot``/``semisup``; ``seeds[0]`` seeds the linear probe's split.
        epochs: for ``linear_finetune`` and ``semisup``.
        ks: kNN neighbour counts (each clipped, with a warning, to the training-set size).
        root, download: where torchvision datasets (cifar10, cifar100, stl10, imagenet) live,
            and whether torchvision may download them there (``build_dataset``'s arguments).
        lidar_images, lidar_views: LiDAR's surrogate classes: that many test images (seeded by
            ``seeds[0]``), each augmented that many times with the model's training views.
        linear_solver: ``"auto"``, ``"lbfgs"`` or ``"streaming"`` for the ``linear`` protocol
            (see :func:`e2mc.evaluation.linear.linear_probe`; the result names the one used).
        feature_dtype: ``"float16"`` or ``"float32"``: how the frozen features are stored (cache
            and memory; :func:`e2mc.evaluation.features.extract_features`'s ``cache_dtype``).
        amp_dtype: feature extraction's autocast (``extract_features``; None: bf16 on CUDA, fp32 on CPU).
    Returns:
        ``{protocol: {metric: value}}`` plus ``"meta"`` (checkpoint, dataset, seeds).
    """
    from e2mc.evaluation.linear import SOLVERS

    if linear_solver not in SOLVERS:
        raise ConfigError(f"unknown linear_solver {linear_solver!r}; choose one of {', '.join(SOLVERS)}")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ConfigError(f"unknown protocol(s) {unknown}; choose from {', '.join(PROTOCOLS)}")
    if not seeds:
        raise ConfigError("seeds must contain at least one integer")
    from e2mc.distributed import pick_device

    device = str(pick_device(device or "auto"))  # ConfigError for an unknown or absent device
    model, path = _load(checkpoint_or_model)
    train_ds, test_ds, spec = _datasets(dataset, train_split, test_split, image_size, root, download)
    has_proj = getattr(model, "projector", None) is not None
    which = ("backbone", "projector") if has_proj and (set(protocols) & _LABEL_FREE) else ("backbone",)
    kw = dict(
        batch_size=batch_size,
        device=device,
        which=which,
        cache_dir=cache_dir,
        use_cache=use_cache,
        cache_key_parts=(spec,),
        cache_dtype=feature_dtype,
        amp_dtype=amp_dtype,
    )
    need_train = set(protocols) & {"knn", "linear", "fewshot"}
    from e2mc.evaluation.features import extract_features, file_sha256

    kw["model_hash"] = file_sha256(path) if path is not None else None  # else: hash of the state dict
    train_f = extract_features(model, train_ds, **kw) if need_train else None
    test_f = extract_features(model, test_ds, **kw)
    out: dict = {
        "meta": {
            "checkpoint": path if path is not None else str(checkpoint_or_model)[:200],
            "dataset": spec,
            "train_split": train_split,
            "test_split": test_split,
            "seeds": [int(s) for s in seeds],
            "seeds_used": seeds_used(protocols, seeds),
            "n_train": len(train_ds),
            "n_test": len(test_ds),
        }
    }
    for p in protocols:
        if p == "lidar":
            out[p] = _lidar(model, test_ds, lidar_images, lidar_views, image_size, device, batch_size, seeds[0])
            continue
        out[p] = _run(
            p,
            model,
            train_f,
            test_f,
            train_ds,
            test_ds,
            seeds,
            ks,
            shots,
            epochs,
            device,
            batch_size,
            image_size,
            linear_solver,
        )
    return out


SEEDED_PROTOCOLS = ("fewshot", "semisup")  # one draw per evaluation seed
FIRST_SEED_PROTOCOLS = ("linear", "linear_finetune", "lidar")  # seeds[0] only


def seeds_used(protocols, seeds) -> dict[str, list[int]]:
    """Which evaluation seeds each protocol used: every seed (few-shot, semi-sup: one draw each),
    the first (linear probe split, fine-tuning, LiDAR's views) or none (deterministic protocols)."""
    seeds = [int(s) for s in seeds]
    return {p: seeds if p in SEEDED_PROTOCOLS else seeds[:1] if p in FIRST_SEED_PROTOCOLS else [] for p in protocols}


def _lidar(model, dataset, n_images, n_views, image_size, device, batch_size, seed) -> dict:
    from e2mc import metrics
    from e2mc.evaluation.surrogate import augmented_embeddings

    emb = augmented_embeddings(
        model,
        dataset,
        n_images=n_images,
        n_views=n_views,
        image_size=image_size,
        device=device,
        batch_size=batch_size,
        seed=seed,
    )
    res: dict = {name: metrics.lidar(z, n_views) for name, z in emb.items()}
    res.update(images=len(next(iter(emb.values()))) // n_views, views=n_views)
    return res


def _run(
    p,
    model,
    train_f,
    test_f,
    train_ds,
    test_ds,
    seeds,
    ks,
    shots,
    epochs,
    device,
    batch_size,
    image_size,
    linear_solver="auto",
):
    from e2mc import metrics

    if p == "knn":
        from e2mc.evaluation.knn import knn_classify

        acc = knn_classify(train_f["backbone"], train_f.labels, test_f["backbone"], test_f.labels, ks=ks)
        return {f"top1_k{k}": v for k, v in acc.items()}
    if p == "linear":
        from e2mc.evaluation.linear import linear_probe

        return linear_probe(
            train_f["backbone"], train_f.labels, test_f["backbone"], test_f.labels, seed=seeds[0], solver=linear_solver
        )
    if p == "fewshot":
        from e2mc.evaluation.fewshot import fewshot

        return fewshot(train_f["backbone"], train_f.labels, test_f["backbone"], test_f.labels, shots=shots, seeds=seeds)
    if p == "linear_finetune":
        from e2mc.evaluation.semisup import linear_probe_finetune

        return linear_probe_finetune(
            model, train_ds, test_ds, epochs, batch_size=batch_size, device=device, image_size=image_size, seed=seeds[0]
        )
    if p == "semisup":
        from e2mc.evaluation.semisup import semisup

        return semisup(
            model,
            train_ds,
            test_ds,
            seeds=seeds,
            epochs=epochs,
            batch_size=batch_size,
            device=device,
            image_size=image_size,
        )
    names = list(test_f.features)
    if p == "rankme":
        return {n: metrics.rankme(test_f[n]) for n in names}
    if p == "uniformity":
        return {n: metrics.uniformity(test_f[n][:4096]) for n in names}
    if p == "spectrum":
        return {n: metrics.singular_values(test_f[n]).tolist() for n in names}
    if p == "alpha_req":
        fits = {n: metrics.alpha_req(test_f[n]) for n in names}
        res = {n: f["alpha"] for n, f in fits.items()}
        res.update({f"r2_{n}": f["r2"] for n, f in fits.items()})
        res.update({f"ranks_{n}": f"{f['k_min']}-{f['k_max']}" for n, f in fits.items()})
        return res
    # entropy: on the projector (E2MC's input), with the method's transform
    if "projector" not in test_f.features:
        raise DataError("entropy needs a projector; this model has none (evaluate rankme/uniformity instead)")
    transform = E2MC_DEFAULTS.get(getattr(model, "method", None) or "", (None, None, "sigmoid"))[2]
    z = test_f["projector"]
    mapped = metrics.get_mapped(z[:, :4], transform)
    return {
        "entropy": metrics.marginal_entropy(z, transform),
        "covariance": metrics.e2mc_covariance(z, transform),
        "transform": transform,
        "marginals_sample": [[round(float(v), 4) for v in col[:1000]] for col in mapped.T],
    }
