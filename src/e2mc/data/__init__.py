"""Data: uint8 datasets (``datasets.py``, ``folder.py``) and on-device augmentation (``views.py``).

API summary: ``build_dataset(spec, split, *, root, image_size, cache_dir, on_error, download,
limit)``, ``ArrayDataset``, ``DatasetInfo``, ``StreamingImageFolder``,
``ViewConfig``, ``view_config(recipe, image_size)``, ``ViewGenerator``, ``LoaderCrops``,
``training_dataset(dataset, views)``, ``eval_transform``, ``make_views`` (audio folders:
``audio.py``, ``audioviews.py``).
"""

from e2mc.data.datasets import ArrayDataset, DatasetInfo, build_dataset
from e2mc.data.folder import StreamingImageFolder
from e2mc.data.views import (
    RECIPES,
    LoaderCrops,
    ViewConfig,
    ViewGenerator,
    eval_transform,
    make_views,
    training_dataset,
    view_config,
)

__all__ = [
    "ArrayDataset",
    "DatasetInfo",
    "StreamingImageFolder",
    "build_dataset",
    "RECIPES",
    "LoaderCrops",
    "ViewConfig",
    "ViewGenerator",
    "eval_transform",
    "make_views",
    "training_dataset",
    "view_config",
]
