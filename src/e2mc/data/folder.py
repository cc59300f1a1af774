"""Image folders: scanning, robust decoding, the in-memory cache and the streaming dataset.

API summary
-----------
- ``scan_folder(root, split) -> FolderScan`` finds the layout: ``<root>/<split>/<class>/*``,
  ``<root>/<class>/*`` (no split folders: only the ``train`` split exists) or a flat folder of
  images (labels -1). Class indices follow one list shared by all splits (``train/``'s sorted
  class folders); a missing split or a class unknown to ``train/`` raises ``DataError``.
- ``decode_files(paths, size, on_error) -> (uint8 (N, 3, size, size), kept_indices, skipped)``
  decodes with torchvision (batched JPEG decode, per-file fallback, PIL for other formats),
  resizes the shorter side to ``size`` (antialiased) and centre-crops.
- ``load_cached(key_parts, cache_dir)`` / ``save_cached(...)``: ``.npy`` + ``.json`` files written
  atomically (:mod:`e2mc.fileio`) under the cache dir, keyed by a SHA-1 of the resolved
  path, split, size and the file list with sizes and mtimes (any change re-decodes).
- ``StreamingImageFolder(samples, classes, load_size, ...)``: decode at ``__getitem__`` for folders
  too large for memory (ImageNet). By default each item is resized (shorter side ``load_size``)
  and centre-cropped to a fixed ``load_size`` square so batches stack (evaluation, probes). A
  ``transform`` of the full decoded uint8 image replaces that inside the DataLoader worker;
  training uses ``with_transform(views.LoaderCrops)`` (see ``views.training_dataset``), whose
  items are the views' random-resized crops of the FULL image.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from e2mc.errors import DataError
from e2mc.fileio import atomic_write_file

log = logging.getLogger(__name__)
# torchvision 0.29 deprecates its image codecs in favour of torchcodec; they still work and are
# the fastest decoder here, so silence that one warning (PIL remains the fallback).
_TV_DEPRECATION = ".*image decoding and encoding capabilities of TorchVision are deprecated.*"

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
SPLIT_DIRS = ("train", "val", "test")  # folder names that make a <root>/<split>/<class>/ layout
LAYOUT_HELP = (
    "Expected <root>/<split>/<class>/*.jpg|png (e.g. train/, val/), <root>/<class>/*.jpg|png, "
    "or a flat folder of images (no labels); for an audio encoder, recordings (wav/flac/ogg/mp3, ...) in class folders."
)


@dataclass
class FolderScan:
    """Result of :func:`scan_folder`: file paths, labels (-1 when flat) and class names."""

    root: str
    paths: list[str]
    targets: list[int]
    classes: list[str] = field(default_factory=list)
    layout: str = "classes"  # "split/classes", "classes" or "flat"


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def _walk(directory: str):
    """``os.walk(directory)`` following symlinked folders, each real folder at most once: a link
    back to a folder already walked (a loop such as ``ln -s . loop``, or a second link to one
    folder) is skipped with a warning naming it, so no image is counted twice."""
    seen = {os.path.realpath(directory)}
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        keep = []
        for d in sorted(n for n in dirnames if not n.startswith(".")):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real in seen:
                skipped.append(os.path.join(dirpath, d))
                continue
            seen.add(real)
            keep.append(d)
        dirnames[:] = keep
        yield dirpath, filenames
    if skipped:
        log.warning(
            "%r: skipped %d linked folder(s) that lead back to a folder already read (a symlink loop or a "
            "duplicate link), e.g. %r; each image is read once. Remove the link(s) to silence this.",
            directory,
            len(skipped),
            skipped[0],
        )


def _images_in(directory: str) -> list[str]:
    out = []
    for dirpath, filenames in _walk(directory):
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f))
    return out


def _class_dirs(directory: str) -> list[str]:
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def _has_image(directory: str) -> bool:
    """True as soon as one image is found under ``directory`` (stops early on large folders)."""
    return any(any(_is_image(f) for f in filenames) for _, filenames in _walk(directory))


def split_dirs(root: str, split: str = "train") -> list[str]:
    """The split folders (``SPLIT_DIRS`` and ``split``) present directly under ``root``."""
    names = dict.fromkeys((*SPLIT_DIRS, split))
    return [s for s in names if os.path.isdir(os.path.join(root, s))]


def scan_folder(root: str, split: str = "train") -> FolderScan:
    """Find the images of ``split`` under ``root``; raise DataError when none are found.

    Class indices come from ONE list shared by every split: the sorted class folders of
    ``train/`` (empty ones included, so a class without training images never shifts the
    others), or of ``split`` itself when there is no ``train/``. A class with images in another
    split but no ``train/`` folder is an error; one whose ``train/`` folder is empty gets a
    warning (no classifier can predict it). A split that does not exist is an error: a folder
    never evaluates on its training images.
    """
    root = os.path.abspath(os.path.expanduser(str(root)))
    if not os.path.isdir(root):
        raise DataError(f"Data folder {root!r} does not exist. {LAYOUT_HELP}")
    present = split_dirs(root, split)
    if present and split not in present:
        where = ", ".join(f"{s}/" for s in present)
        what, hint = (
            ("training", " (training: --set data.split=NAME)")
            if split == "train"
            else ("held-out", " (e2mc evaluate/compare: --test-split NAME)")
        )
        raise DataError(
            f"Image folder {root!r} has no {split!r} split ({os.path.join(root, split)} does not "
            f"exist; it has {where}): put {what} images in {os.path.join(root, split, '<class>')}/, "
            f"or pick an existing split{hint}."
        )
    if not present and split != "train":
        raise DataError(
            f"Image folder {root!r} has no {split!r} split: its images are not in split folders, and "
            f"evaluating on them would score the training images. Move them into "
            f"{os.path.join(root, 'train', '<class>')}/ and held-out ones into "
            f"{os.path.join(root, split, '<class>')}/."
        )
    base, layout = (os.path.join(root, split), "split/classes") if present else (root, "classes")
    classes = _class_dirs(base)
    if present and split != "train" and "train" in present:
        classes = _check_against_train(root, base, split, classes)
    paths: list[str] = []
    targets: list[int] = []
    for index, name in enumerate(classes):
        files = _images_in(os.path.join(base, name)) if os.path.isdir(os.path.join(base, name)) else []
        targets.extend([index] * len(files))
        paths.extend(files)
    if not paths:  # flat folder: images directly under base, no classes
        paths = [os.path.join(base, f) for f in sorted(os.listdir(base)) if _is_image(f)]
        paths = [p for p in paths if os.path.isfile(p)]
        targets, classes, layout = [-1] * len(paths), [], "flat"
    if not paths:
        raise DataError(f"No images or recordings found in {base!r} (split {split!r}). {LAYOUT_HELP}")
    return FolderScan(base, paths, targets, classes, layout)


def _names(names: list[str], at_most: int = 8) -> str:
    shown = ", ".join(names[:at_most])
    return f"[{shown}, ... {len(names)} in all]" if len(names) > at_most else f"[{shown}]"


def _check_against_train(root: str, base: str, split: str, here: list[str]) -> list[str]:
    """The class list of ``train/``; DataError for classes of ``split`` that ``train/`` lacks."""
    train = os.path.join(root, "train")
    classes = _class_dirs(train)
    unknown = [c for c in here if c not in classes and _has_image(os.path.join(base, c))]
    if unknown:
        raise DataError(
            f"{split}/ of {root!r} has class folder(s) {_names(unknown)} that train/ lacks (train/ "
            f"has {_names(classes)}); no classifier trained on train/ can predict them: add their training "
            f"images to {os.path.join(train, '<class>')}/ or remove them from {split}/."
        )
    empty = [
        c for c in here if c in classes and not _has_image(os.path.join(train, c)) and _has_image(os.path.join(base, c))
    ]
    if empty:
        warnings.warn(
            f"{root!r}: class(es) {_names(empty)} have images in {split}/ but none in train/; their indices "
            f"are kept, but no classifier trained on train/ can predict them (accuracy counts them "
            f"as errors). Add training images to {os.path.join(train, '<class>')}/.",
            stacklevel=3,
        )
    return classes


def _resize_center(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side of (…, 3, H, W) uint8 to ``size`` (antialiased), centre-crop."""
    from torchvision.transforms.v2 import functional as F

    h, w = img.shape[-2:]
    if (h, w) == (size, size):
        return img
    if min(h, w) != size:
        img = F.resize(img, size, antialias=True)
    return F.center_crop(img, [size, size])


def decode_one(path: str, data: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Decode one image file to uint8 RGB (3, H, W); raises on unreadable data.

    Multi-frame files (animated GIF/WebP, multi-page TIFF) give their first frame; 16-bit images
    (PNG ``I;16``, 16-bit RGB) are scaled to 8 bits (``round(v / 257)``, 65535 -> 255), never cut
    to their low byte."""
    from torchvision.io import ImageReadMode, decode_image

    data = read_bytes(path) if data is None else data
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_TV_DEPRECATION)
            img = decode_image(data, mode=ImageReadMode.RGB)
    except Exception:  # formats torchvision cannot decode: fall back to PIL
        img = _decode_pil(path)
    if img.ndim == 4:  # torchvision decodes every frame of an animated GIF: keep the first
        img = img[0]
    return to_uint8(img, path)


def read_bytes(path: str) -> torch.Tensor:
    """The file's bytes as a uint8 tensor (Python's ``open``: also names that are not valid UTF-8,
    which ``torchvision.io.read_file`` refuses)."""
    with open(path, "rb") as fh:
        raw = bytearray(fh.read())
    return torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)


def _decode_pil(path: str) -> torch.Tensor:
    """PIL's decoding of ``path`` (the first frame), as (3, H, W) uint8, or uint16 for 16-bit
    single-channel data (PIL's own ``convert("RGB")`` would saturate those at 255)."""
    from PIL import Image

    with open(path, "rb") as fh:
        pil = Image.open(io.BytesIO(fh.read()))
        pil.seek(0)
        if pil.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            arr = np.asarray(pil).astype(np.int64)
            if arr.size and (arr.min() < 0 or arr.max() > 65535):
                raise ValueError(f"{pil.mode} pixel values outside 0..65535 (not a 16-bit image)")
            gray = torch.from_numpy(arr.astype(np.uint16))
            return gray.unsqueeze(0).expand(3, -1, -1).contiguous()
        if pil.mode == "F":
            raise ValueError("32-bit float pixels (mode F) have no defined 8-bit scale; convert the file to 8 bits")
        rgb = np.array(pil.convert("RGB"))
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def to_uint8(img: torch.Tensor, path: str = "") -> torch.Tensor:
    """``img`` as uint8: 16-bit values scaled by 255/65535 with rounding (exact: ``(v + 128) // 257``)."""
    if img.dtype == torch.uint8:
        return img
    if img.dtype == torch.uint16:
        return ((img.to(torch.int32) + 128) // 257).to(torch.uint8)
    raise ValueError(f"unsupported pixel type {img.dtype} in {path}")


def decode_files(paths: Sequence[str], size: int, on_error: str = "skip", chunk: int = 4096):
    """Decode and resize ``paths`` to (N, 3, size, size) uint8.

    Returns ``(images, kept, skipped)`` where ``kept`` indexes ``paths`` for the rows of
    ``images`` and ``skipped`` lists unreadable files (``on_error="skip"``). With
    ``on_error="raise"`` the first unreadable file raises DataError naming it.
    JPEGs are decoded in batches by ``torchvision.io.decode_jpeg``; a batch with a bad file
    falls back to per-file decoding so only that file is lost.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TV_DEPRECATION)
        return _decode_files(paths, size, on_error, chunk)


def _decode_files(paths, size, on_error, chunk):
    from torchvision.io import ImageReadMode, decode_jpeg

    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    kept: list[int] = []
    skipped: list[str] = []
    for start in range(0, len(paths), chunk):
        idx = list(range(start, min(start + chunk, len(paths))))
        datas, imgs = {}, {}
        for i in idx:
            try:
                datas[i] = read_bytes(paths[i])
            except Exception as exc:
                _fail(paths[i], exc, on_error, skipped)
        jpgs = [i for i in datas if paths[i].lower().endswith((".jpg", ".jpeg"))]
        if jpgs:
            try:
                for i, im in zip(jpgs, decode_jpeg([datas[i] for i in jpgs], mode=ImageReadMode.RGB)):
                    imgs[i] = im
            except Exception:
                imgs = {}
        for i in idx:
            if i in datas and i not in imgs:
                try:
                    imgs[i] = decode_one(paths[i], datas[i])
                except Exception as exc:
                    _fail(paths[i], exc, on_error, skipped)
        for i in sorted(imgs):
            out[len(kept)] = _resize_center(imgs[i], size)
            kept.append(i)
    return out[: len(kept)], kept, skipped


def _fail(path: str, exc: Exception, on_error: str, skipped: list) -> None:
    if on_error == "raise":
        raise DataError(
            f"Cannot read image {path!r}: {exc}. Remove or replace the file, "
            "or skip unreadable images (training: --set data.on_error=skip; Python: on_error='skip')."
        ) from exc
    skipped.append(path)


def fail_cached(path: str) -> None:
    """``DataError`` for an unreadable image an earlier read (with ``on_error="skip"``) cached as skipped."""
    raise DataError(
        f"Cannot read image {path!r} (found unreadable when this folder was first decoded and cached). Remove or "
        "replace the file, or skip unreadable images (training: --set data.on_error=skip; Python: on_error='skip')."
    )


def cache_key(parts: dict, paths: Sequence[str]) -> str:
    """SHA-1 over ``parts`` and each file's path, size and mtime (any change gives a new key)."""
    h = hashlib.sha1(json.dumps(parts, sort_keys=True).encode())
    for p in paths:  # os.fsencode: names that are not valid UTF-8 hash as their bytes
        st = os.stat(p)
        h.update(os.fsencode(p) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def load_cached(cache_dir: str, stem: str):
    """Return ``(images uint8 tensor, meta dict)`` from the cache, or None when absent/corrupt."""
    npy, meta = os.path.join(cache_dir, stem + ".npy"), os.path.join(cache_dir, stem + ".json")
    if not (os.path.isfile(npy) and os.path.isfile(meta)):
        return None
    try:
        with open(meta) as fh:
            info = json.load(fh)
        return torch.from_numpy(np.load(npy)), info
    except Exception as exc:  # a damaged cache is rebuilt, never fatal
        log.warning("ignoring unreadable dataset cache %s: %s", npy, exc)
        return None


def save_cached(cache_dir: str, stem: str, images: torch.Tensor, meta: dict) -> None:
    """Write ``<stem>.npy`` then ``<stem>.json`` atomically; failures only log a warning."""
    try:
        os.makedirs(cache_dir, exist_ok=True)
        atomic_write_file(os.path.join(cache_dir, stem + ".npy"), lambda fh: np.save(fh, images.numpy()))
        atomic_write_file(os.path.join(cache_dir, stem + ".json"), lambda fh: fh.write(json.dumps(meta).encode()))
    except OSError as exc:
        log.warning("could not write dataset cache under %s: %s", cache_dir, exc)


class StreamingImageFolder(Dataset):
    """Images decoded at ``__getitem__`` (for folders too large for memory).

    Items are ``(uint8 (3, load_size, load_size), label)``: shorter side resized to
    ``load_size`` and centre-cropped, unless ``transform`` (applied to the full decoded uint8
    image, e.g. ``v2.RandomResizedCrop`` or ``views.LoaderCrops``) is given; it must return a
    fixed size (a tensor, or a list of tensors: one per view). Unreadable files:
    ``on_error="skip"`` returns the next readable sample (i+1, i+2, … deterministically) and
    appends the bad path to ``.skipped`` (per process: DataLoader workers keep their own list);
    ``on_error="raise"`` raises DataError naming the file.
    """

    def __init__(self, samples, classes, load_size=256, transform=None, on_error="skip", info=None):
        self.samples = list(samples)
        self.targets = [int(t) for _, t in self.samples]
        self.classes = list(classes)
        self.load_size = int(load_size)
        self.transform = transform
        self.on_error = on_error
        self.skipped: list[str] = []
        self.info = info

    def __len__(self) -> int:
        return len(self.samples)

    def with_transform(self, transform) -> "StreamingImageFolder":
        """A shallow copy (same samples and info) whose items go through ``transform``."""
        other = copy.copy(self)
        other.transform = transform
        return other

    def __getitem__(self, index: int):
        for k in range(len(self.samples)):
            path, target = self.samples[(index + k) % len(self.samples)]
            try:
                img = decode_one(path)
            except Exception as exc:
                _fail(path, exc, self.on_error, self.skipped)
                log.warning("skipping unreadable image %s (%d so far)", path, len(self.skipped))
                continue
            img = self.transform(img) if self.transform is not None else _resize_center(img, self.load_size)
            return img, int(target)
        raise DataError("No readable image in the dataset; check the files.")
