"""Data: uint8 datasets (``datasets.py``, ``folder.py``) and on-device augmentation (``views.py``).

API summary: ``build_dataset(spec, split, *, root, image_size, cache_dir, on_error, download,
limit)``, ``ArrayDataset``, ``DatasetInfo``, ``StreamingImageFolder``, ``make_loader``,
``ViewConfig``, ``view_config(recipe, image_size)``, ``ViewGenerator``, ``LoaderCrops``,
``training_dataset(dataset, views)``, ``eval_transform``.
"""

from .datasets import ArrayDataset, DatasetInfo, balanced_subset, build_dataset, make_loader
from .folder import StreamingImageFolder
from .views import (RECIPES, LoaderCrops, ViewConfig, ViewGenerator, eval_transform, training_dataset,
                    view_config)

__all__ = [
    "ArrayDataset", "DatasetInfo", "StreamingImageFolder", "balanced_subset", "build_dataset",
    "make_loader", "RECIPES", "LoaderCrops", "ViewConfig", "ViewGenerator", "eval_transform",
    "training_dataset", "view_config",
]
