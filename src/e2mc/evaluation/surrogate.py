"""Surrogate classes for LiDAR: several augmentations of each of a few images, embedded.

``augmented_embeddings(model, dataset, ...)`` draws ``n_images`` images of ``dataset`` (seeded),
makes ``n_views`` augmentations of each with the model's training view recipe (the large views of
``e2mc.data.views``, at the dataset's image size), and returns the backbone (and projector)
embeddings, rows grouped per image as ``metrics.lidar`` expects. Seeded end to end: the same
call gives the same numbers.
"""

from __future__ import annotations

import torch

from e2mc.errors import ConfigError


@torch.no_grad()
def augmented_embeddings(
    model,
    dataset,
    *,
    n_images: int = 500,
    n_views: int = 8,
    recipe: str | None = None,
    image_size: int | None = None,
    device: str = "cpu",
    batch_size: int = 256,
    seed: int = 0,
    which=("backbone", "projector"),
) -> dict[str, torch.Tensor]:
    """``{name: (n * n_views, D) float32}`` with rows ``i * n_views + j`` = view ``j`` of image ``i``."""
    from e2mc.data.views import ViewGenerator, view_config
    from e2mc.methods import DEFAULT_METHOD, get_method
    from e2mc.models.model import has_head_embedding, head_embedding

    if n_views < 2 or n_images < 2:
        raise ConfigError(
            f"lidar needs at least 2 images and 2 views per image, got {n_images} x {n_views}; "
            "raise --lidar-images / --lidar-views (Python: lidar_images=, lidar_views=)"
        )
    n = min(int(n_images), len(dataset))
    if n < 2:
        raise ConfigError(f"lidar needs at least 2 images; the dataset has {len(dataset)}")
    info = dataset.info
    size = int(image_size or info.image_size or dataset[0][0].shape[-1])
    recipe = recipe or get_method(getattr(model, "method", None) or DEFAULT_METHOD).views
    cfg = view_config(recipe, size)
    gen = ViewGenerator(cfg, size, info.mean, info.std, device)
    g = torch.Generator().manual_seed(int(seed))
    pick = torch.randperm(len(dataset), generator=g)[:n].tolist()
    was_training = model.training
    model.eval()
    want = [w for w in which if w == "backbone" or (w == "projector" and has_head_embedding(model))]
    out: dict[str, list] = {w: [] for w in want}
    per_call = max(1, cfg.n_large)
    chunk = max(1, batch_size // n_views)
    try:
        for start in range(0, n, chunk):
            images = torch.stack([dataset[i][0] for i in pick[start : start + chunk]])
            views: list[torch.Tensor] = []
            while len(views) < n_views:
                views.extend(gen(images, generator=g)[:per_call])
            x = torch.stack(views[:n_views], dim=1).flatten(0, 1)  # (images * n_views, 3, S, S), per image
            f = model.embed(x.to(device))
            if "backbone" in out:
                out["backbone"].append(f.float().cpu())
            if "projector" in out:
                out["projector"].append(head_embedding(model, f).float().cpu())
    finally:
        model.train(was_training)
    return {w: torch.cat(v) for w, v in out.items()}
