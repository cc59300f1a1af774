"""Datasets as uint8 images: the embedded digits, torchvision datasets and image folders.

API summary
-----------
- ``build_dataset(spec, split="train", *, root=None, image_size=None, cache_dir=None,
  on_error="skip", download=False, limit=None, max_memory_gb=2.0) -> Dataset``
  ``spec``: ``"digits"`` (scikit-learn, embedded), ``"cifar10"``, ``"cifar100"``, ``"stl10"``
  (train/test/unlabeled), ``"imagenet"`` (train/val), a path to an image folder, or a
  JSON split file (index subsets of another dataset's split; see ``splits.py``). A folder of
  audio files (wav/flac/ogg/opus/mp3/aiff) is an ``AudioDataset`` of float segments (``audio.py``; ``audio``:
  the ``data.audio`` options).
  Items ``(uint8 (3, H, W), int label)``, label -1 when unknown; attributes ``.classes``,
  ``.targets``, ``.info`` (:class:`DatasetInfo`), ``.skipped`` (unreadable files).
- ``ArrayDataset(images, targets, classes, info)``: in-memory uint8 (N, 3, H, W) images.
- ``DatasetInfo``: name, split, num_classes, image_size, mean, std (floats in [0, 1] scale),
  num_samples.
- ``first_per_class(targets, limit)``: indices of the first ``limit`` samples in class-balanced
  (round-robin over classes) order, returned sorted (``data.limit``; not a random draw: that is
  :func:`e2mc.data.splits.balanced_subset`).

Folders whose decoded size at ``image_size`` is at most ``max_memory_gb`` are decoded once into
an ``ArrayDataset`` and cached as ``.npy`` (see ``folder.py``); larger ones (ImageNet) become a
``StreamingImageFolder`` with a fixed ``load_size`` (``image_size`` or 256) for evaluation; in
training its workers cut the views' crops from the full image instead (``views.training_dataset``).
Mean/std and the
image size of a folder are those of its ``train`` split, for every split (so train and test are
normalised alike; streaming folders use the ImageNet constants). Class indices of a folder follow
one class list shared by all its splits (see ``folder.scan_folder``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset

from e2mc.data import audio as _audio
from e2mc.data import folder as _folder
from e2mc.data import splits as _splits
from e2mc.errors import DataError
from e2mc.fileio import cache_root

log = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}
DATASET_NAMES = ("digits", *_STATS)  # the built-in names (a folder of the same name is not read)
_SPLITS = {
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "stl10": ("train", "test", "unlabeled"),
    "imagenet": ("train", "val"),
}
DIGITS_TEST_FRACTION, DIGITS_SEED = 0.25, 0


@dataclass
class DatasetInfo:
    """What a model and the views need to know about a dataset."""

    name: str
    split: str
    num_classes: int
    image_size: int
    mean: tuple
    std: tuple
    num_samples: int
    modality: str = "image"  # "audio": items are float waveforms (image_size = segment samples)
    sample_rate: Optional[int] = None  # audio only

    def to_dict(self) -> dict:
        """Plain dict (JSON/YAML friendly)."""
        return asdict(self)


class ArrayDataset(Dataset):
    """uint8 images (N, 3, H, W) held in memory with integer targets (-1 = unknown)."""

    def __init__(
        self,
        images: torch.Tensor,
        targets: Sequence[int],
        classes: Sequence[str],
        info: DatasetInfo,
        skipped: Optional[list] = None,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise DataError(f"ArrayDataset needs uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}.")
        if len(targets) != images.shape[0]:
            raise DataError(f"{images.shape[0]} images but {len(targets)} targets.")
        self.images = images
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self.info = info
        self.skipped = list(skipped or [])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        return self.images[index], self.targets[index]

    def subset(self, indices: Sequence[int]) -> "ArrayDataset":
        """A new ArrayDataset with the rows ``indices`` (info.num_samples updated)."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        info = DatasetInfo(**{**self.info.to_dict(), "num_samples": len(idx)})
        return ArrayDataset(self.images[idx], [self.targets[i] for i in idx.tolist()], self.classes, info, self.skipped)


def channel_stats(images: torch.Tensor):
    """Per-channel mean and std of uint8 (N, 3, H, W) images in [0, 1] scale.

    Exact: computed from the 256-bin histogram of each channel (float64 sums). A channel that is
    constant over the images gets std ``1/255`` (one grey level) instead of 0, so normalising
    never divides by zero.
    """
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    mean, std = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = counts.sum()
        m = (counts * levels).sum() / n
        var = (counts * (levels - m) ** 2).sum() / n
        mean.append(round(float(m), 6))
        std.append(round(max(float(var.sqrt()), 1.0 / 255.0), 6))
    return tuple(mean), tuple(std)


def first_per_class(targets: Sequence[int], limit: int) -> list[int]:
    """First ``limit`` indices in class-balanced round-robin order (classes sorted), sorted."""
    if limit is None or limit >= len(targets):
        return list(range(len(targets)))
    if limit <= 0:
        raise DataError(f"limit must be a positive number of samples, got {limit}.")
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    queues = [by_class[c] for c in sorted(by_class)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < limit:
        for q in queues:
            if depth < len(q) and len(chosen) < limit:
                chosen.append(q[depth])
        depth += 1
    return sorted(chosen)


def _resize_array(images: torch.Tensor, size: Optional[int]) -> torch.Tensor:
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    return torch.cat([_folder._resize_center(images[i : i + 4096], size) for i in range(0, images.shape[0], 4096)])


def _digits(split: str, image_size: Optional[int]) -> ArrayDataset:
    """scikit-learn's 8x8 digits; stratified 75/25 split with random_state=0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise DataError(f"digits has splits 'train' and 'test', not {split!r}.")
    d = load_digits()
    idx = list(range(len(d.target)))
    tr, te = train_test_split(idx, test_size=DIGITS_TEST_FRACTION, stratify=d.target, random_state=DIGITS_SEED)
    size = image_size or 16
    x = torch.from_numpy(d.images).float().mul(255.0 / 16.0).round().clamp(0, 255).to(torch.uint8)
    x = x[:, None].expand(-1, 3, -1, -1).contiguous()
    x = _resize_array(x, size)
    y = torch.from_numpy(d.target).long()
    mean, std = channel_stats(x[sorted(tr)])
    rows = sorted(tr if split == "train" else te)
    info = DatasetInfo("digits", split, 10, size, mean, std, len(rows))
    return ArrayDataset(x[rows], y[rows].tolist(), [str(c) for c in range(10)], info)


def _torchvision(name: str, split: str, root: Optional[str], image_size, download: bool):
    import numpy as np
    from torchvision import datasets as tvd

    if split not in _SPLITS[name]:
        raise DataError(
            f"{name} has splits {_SPLITS[name]}, not {split!r}; pick one (e2mc evaluate/compare: "
            f"--test-split {_SPLITS[name][1]}; training: --set data.split=NAME)."
        )
    root = os.path.abspath(os.path.expanduser(root or os.path.join(cache_root(), "datasets", name)))
    mean, std = _STATS[name]
    if name == "imagenet":
        return _imagenet(root, split, image_size)
    hint = (
        f"{name} ({split}) was not found under {root!r}: pass --download (config: data.download=true; "
        f"Python: download=True) to let torchvision download it there, or point --data-root (config: "
        f"data.root; Python: root=) at a folder that holds it."
    )
    try:
        if name in ("cifar10", "cifar100"):
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            ds = cls(root, train=(split == "train"), download=download)
            x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        else:
            ds = tvd.STL10(root, split=split, download=download)
            x = torch.from_numpy(np.ascontiguousarray(ds.data))
    except RuntimeError as exc:
        raise DataError(hint) from exc
    targets = [int(t) for t in (ds.targets if hasattr(ds, "targets") else ds.labels)]
    x = _resize_array(x, image_size)
    info = DatasetInfo(name, split, len(ds.classes), x.shape[-1], mean, std, len(targets))
    return ArrayDataset(x, targets, ds.classes, info)


def _imagenet(root: str, split: str, image_size) -> Dataset:
    """ImageNet as extracted folders ``root/{train,val}/<wnid>/*`` or torchvision's archives."""
    load = image_size or 256
    if os.path.isdir(os.path.join(root, split)):
        scan = _folder.scan_folder(root, split)
        samples, classes = list(zip(scan.paths, scan.targets)), scan.classes
    else:
        from torchvision.datasets import ImageNet

        try:
            ds = ImageNet(root, split=split)
        except (RuntimeError, FileNotFoundError) as exc:
            raise DataError(
                f"ImageNet ({split}) not found under {root!r}. torchvision cannot download it: "
                "get ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and "
                "ILSVRC2012_devkit_t12.tar.gz from image-net.org into that folder, or extract "
                "to <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG."
            ) from exc
        samples, classes = ds.samples, ds.wnids
    info = DatasetInfo("imagenet", split, len(classes), load, IMAGENET_MEAN, IMAGENET_STD, len(samples))
    return _folder.StreamingImageFolder(samples, classes, load, info=info)


def _image_folder(path, split, image_size, cache_dir, on_error, limit, max_memory_gb):
    scan = _folder.scan_folder(path, split)
    keep = first_per_class(scan.targets, limit) if limit else range(len(scan.paths))
    paths = [scan.paths[i] for i in keep]
    targets = [scan.targets[i] for i in keep]
    name = os.path.basename(os.path.normpath(path)) or "folder"
    size, ref = image_size, None
    if split != "train" and scan.layout != "flat":  # size and normalisation of the training split
        ref = _image_folder(path, "train", image_size, cache_dir, on_error, limit, max_memory_gb).info
        size = ref.image_size
    if size is None:  # the shorter side of the first readable image
        for p in paths:
            try:
                size = min(_folder.decode_one(p).shape[-2:])
                break
            except Exception:
                continue
        if size is None:
            raise DataError(f"No readable image in {scan.root!r}.")
    n_classes = len(scan.classes)
    if len(paths) * 3 * size * size > max_memory_gb * 2**30:
        info = DatasetInfo(name, split, n_classes, size, IMAGENET_MEAN, IMAGENET_STD, len(paths))
        return _folder.StreamingImageFolder(zip(paths, targets), scan.classes, size, on_error=on_error, info=info)
    cache_dir = cache_dir or str(cache_root() / "datasets")
    parts = {
        "root": scan.root,
        "split": split,
        "size": size,
        "classes": scan.classes,
        "v": 2,
        "stats_from": None if ref is None else [ref.mean, ref.std],
    }
    stem = f"{name}-{split}-{size}-{_folder.cache_key(parts, paths)}"
    hit = _folder.load_cached(cache_dir, stem)
    if hit is not None:
        images, meta = hit
        if meta["skipped"] and on_error == "raise":  # decoded by a run that skipped them: not this one's rule
            _folder.fail_cached(meta["skipped"][0])
        if meta["skipped"]:  # said on every read, not only the first (which decoded and cached the folder)
            log.warning(
                "skipped %d unreadable image(s) in %s, e.g. %s", len(meta["skipped"]), scan.root, meta["skipped"][0]
            )
        info = DatasetInfo(**{**meta["info"], "mean": tuple(meta["info"]["mean"]), "std": tuple(meta["info"]["std"])})
        return ArrayDataset(images, meta["targets"], meta["classes"], info, meta["skipped"])
    images, kept, skipped = _folder.decode_files(paths, size, on_error)
    if skipped:
        log.warning("skipped %d unreadable image(s) in %s, e.g. %s", len(skipped), scan.root, skipped[0])
    if not kept:
        raise DataError(f"None of the {len(paths)} images in {scan.root!r} could be read.")
    mean, std = channel_stats(images) if ref is None else (tuple(ref.mean), tuple(ref.std))
    info = DatasetInfo(name, split, n_classes, size, mean, std, len(kept))
    ds = ArrayDataset(images, [targets[i] for i in kept], scan.classes, info, skipped)
    meta = {"info": info.to_dict(), "targets": ds.targets, "classes": ds.classes, "skipped": skipped}
    _folder.save_cached(cache_dir, stem, images, meta)
    return ds


def build_dataset(
    spec,
    split: str = "train",
    *,
    root=None,
    image_size=None,
    cache_dir=None,
    on_error: str = "skip",
    download: bool = False,
    limit=None,
    max_memory_gb: float = 2.0,
    audio=None,
) -> Dataset:
    """Build a dataset of ``(uint8 (3, H, W), label)`` items; see the module docstring. A folder of
    audio files is an ``AudioDataset`` (``data.audio``: ``audio=e2mc.config.AudioConfig()``)."""
    if on_error not in ("skip", "raise"):
        raise DataError(f"on_error must be 'skip' or 'raise', got {on_error!r}.")
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise DataError(f"image_size must be a positive integer, got {image_size!r}.")
    key = str(spec).lower()
    if _splits.is_split_file(spec):  # a JSON split file: index subsets of another dataset's split
        ds = _splits.split_dataset(
            spec,
            split,
            lambda s, sp: build_dataset(
                s,
                sp,
                root=root,
                image_size=image_size,
                cache_dir=cache_dir,
                on_error=on_error,
                download=download,
                max_memory_gb=max_memory_gb,
                audio=audio,
            ),
        )
        return ds.subset(first_per_class(ds.targets, limit)) if limit else ds
    if key == "digits":
        ds = _digits(split, image_size)
    elif key in _STATS:
        ds = _torchvision(key, split, root, image_size, download)
    elif os.path.isdir(os.path.expanduser(str(spec))) and _audio.is_audio_folder(os.path.expanduser(str(spec))):
        ds = _audio.audio_folder(os.path.expanduser(str(spec)), split, audio, on_error, info_cls=DatasetInfo)
        return ds.subset(first_per_class(ds.targets, limit)) if limit else ds
    elif os.path.isdir(os.path.expanduser(str(spec))) or os.sep in str(spec):
        return _image_folder(
            os.path.expanduser(str(spec)), split, image_size, cache_dir, on_error, limit, max_memory_gb
        )
    else:
        raise DataError(
            f"Unknown dataset {spec!r}: use 'digits', 'cifar10', 'cifar100', "
            "'stl10', 'imagenet' or the path of an image or audio folder."
        )
    if limit and isinstance(ds, ArrayDataset):
        ds = ds.subset(first_per_class(ds.targets, limit))
    elif limit:
        keep = first_per_class(ds.targets, limit)
        ds.samples = [ds.samples[i] for i in keep]
        ds.targets = [ds.targets[i] for i in keep]
        ds.info.num_samples = len(keep)
    return ds
