"""Augmentation views per method: random-resized crops, then per-sample augmentation of uint8
batches on the device.

API summary
-----------
- ``ViewConfig``: one recipe (crop sizes/scales/counts/ratio/interpolation, flip, colour jitter,
  grayscale, blur, solarisation probabilities per view); ``crop_specs()`` lists each view's
  ``(size, scale)``. ``view_config(recipe, image_size, **overrides)`` builds the named recipe
  (``RECIPES``: one per method, declared in its ``e2mc.methods`` file) for an image size.
- ``ViewGenerator(recipe, image_size, mean, std, device)``; ``gen(batch, generator=None)
  -> list[float (N, 3, h, w)]`` normalised views, large crops first. ``batch`` is either one
  uint8 (N, 3, H, W) batch (the crops are cut on the device) or a list with one uint8 batch per
  view already cropped to the view's size (by ``LoaderCrops`` in the DataLoader workers); then
  only flip, jitter, grayscale, blur and solarisation run on the device.
- ``LoaderCrops(cfg)``: picklable worker transform, full decoded uint8 (3, H, W) image -> list
  of uint8 crops, one per view (``torchvision.transforms.v2.RandomResizedCrop`` with the
  recipe's size, scale, ratio and interpolation, antialiased). ``gen.loader_crops()`` gives the
  one matching a generator's recipe (the crop parameters have one source: the ``ViewConfig``).
- ``training_dataset(dataset, views)``: the dataset the training loader reads. Datasets that
  decode per item (``StreamingImageFolder``: ImageNet, large folders) get ``LoaderCrops`` so the
  crops come from the FULL decoded image, as in the official recipes; in-memory datasets
  (``ArrayDataset``: digits, CIFAR, cached folders, where the stored image is the whole image)
  are returned unchanged and cropped on the device.
- ``eval_transform(batch_uint8, info_or_mean_std, image_size=None, crop_pct=0.875)``.

Implementation: ``kornia.augmentation`` with ``same_on_batch=False`` (each image draws its own
crop, flip, jitter, ... parameters). Measured on a 256x3x32x32 batch, 2-core CPU, the two
VICReg views: kornia 39 ms vs 169 ms for a per-image ``torchvision.transforms.v2`` loop (v2 draws
one set of parameters per call, so per-sample randomness needs the loop); under heavy load 363 vs
2084 ms. Kornia's crop resampling has no antialias when shrinking (torchvision's has). In the
workers each item is one image, so the per-image v2 crop costs nothing extra there.

Size rule: the large crop is 224 when ``image_size >= 224`` and ``image_size`` otherwise (e.g.
ImageNet stored at 256 -> 224 crops, CIFAR 32 -> 32). SwAV's small crops are
``large * 96 / 224`` rounded to a multiple of 8 (224 -> 96, 32 -> 16, 64 -> 24).
Gaussian blur is off by default for images of at most 64 px (standard CIFAR practice); the
kernel is ``0.1 * crop size`` rounded to odd.

Randomness: on the device, parameters are drawn from the global torch RNG (of the batch's
device: kornia samples on the device of the input). Under a fixed ``torch.manual_seed`` the views
are reproducible. When ``generator`` (a ``torch.Generator``) is passed, a seed is drawn from it and
the views are made inside ``torch.random.fork_rng`` seeded with it, leaving the global RNG
untouched. ``LoaderCrops`` draws from the worker's torch RNG (seeded by the DataLoader from its
``generator`` and the worker id; the main process's RNG when ``num_workers=0``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from e2mc.errors import ConfigError, DataError
from e2mc.methods import METHODS

RECIPES = tuple(m.views for m in METHODS.values())  # one recipe per method, declared in its file


@dataclass
class ViewConfig:
    """One augmentation recipe. Per-view tuples (``blur_p``, ``solarize_p``) have one entry per
    view (``n_large`` then ``n_small``) or a single entry used for all views."""

    name: str = "custom"
    large_size: int = 224
    n_large: int = 2
    large_scale: tuple = (0.08, 1.0)
    small_size: int = 96
    n_small: int = 0
    small_scale: tuple = (0.05, 0.14)
    ratio: tuple = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: tuple = (0.0,)
    blur_sigma: tuple = (0.1, 2.0)
    solarize_p: tuple = (0.0,)
    interpolation: str = "bilinear"  # resampling of the random-resized crop: "bilinear" | "bicubic"

    @property
    def num_views(self) -> int:
        """Total number of views (large + small)."""
        return self.n_large + self.n_small

    def crop_specs(self) -> list[tuple[int, tuple]]:
        """``(size, scale)`` of each view, large views first: the one list every crop is cut by."""
        return [(int(self.large_size), tuple(self.large_scale))] * self.n_large + [
            (int(self.small_size), tuple(self.small_scale))
        ] * self.n_small

    def per_view(self, values: Sequence[float], what: str) -> list:
        """Expand a 1-entry tuple to all views; check the length otherwise."""
        values = tuple(values) if isinstance(values, (tuple, list)) else (values,)
        if len(values) == 1:
            return list(values) * self.num_views
        if len(values) != self.num_views:
            raise ConfigError(
                f"{what} has {len(values)} entries but the recipe makes "
                f"{self.num_views} views; give one value or one per view."
            )
        return list(values)


def crop_sizes(image_size: int) -> tuple[int, int]:
    """(large, small) crop sizes for an image size (see the module docstring)."""
    large = 224 if image_size >= 224 else int(image_size)
    small = max(8, int(round(large * 96 / 224 / 8)) * 8)
    return large, small


def view_config(recipe: str, image_size: int, fields: Optional[dict] = None, **overrides) -> ViewConfig:
    """The named recipe (a method's ``view_recipe``, ``e2mc.methods``) scaled to ``image_size``.

    The values, with their sources in the official code, are declared in each method's file. Crop
    sizes follow the size rule above (``n_small`` views at the small crop size); the recipe's
    ``small_images`` fields replace its own for images of at most 64 px (blur off); all flip with
    p=0.5 and use ratio (3/4, 4/3), torchvision's default, unless the recipe says otherwise.
    ``fields``: the recipe's fields for this run (``Method.view_fields``: DINO's
    ``local_crops_number``) instead of the method's declared ``view_recipe``.
    """
    spec = METHODS.get(recipe) if isinstance(recipe, str) else None
    if spec is None:
        raise ConfigError(f"Unknown view recipe {recipe!r}; choose one of {RECIPES} or pass a ViewConfig.")
    large, small = crop_sizes(image_size)
    fields = dict(spec.view_recipe if fields is None else fields)
    small_images = fields.pop("small_images", {})
    if image_size <= 64:
        fields.update(small_images)
    if fields.get("n_small"):
        fields.setdefault("small_size", small)
    cfg = ViewConfig(spec.views, large_size=large, **fields)
    return replace(cfg, **overrides)


def _pipeline(cfg: ViewConfig, size: int, scale, blur_p: float, solarize_p: float, crop: bool = True):
    """The kornia ops of one view; ``crop=False`` when the crop was cut in the loader."""
    import kornia.augmentation as K

    ops = []
    if crop:
        ops.append(
            K.RandomResizedCrop(
                (size, size),
                scale=tuple(scale),
                ratio=tuple(cfg.ratio),
                resample=cfg.interpolation,
                same_on_batch=False,
                cropping_mode="resample",
            )
        )
    ops.append(K.RandomHorizontalFlip(p=cfg.flip_p))
    if cfg.jitter_p > 0 and any(cfg.jitter):
        b, c, s, h = cfg.jitter
        ops.append(K.ColorJitter(b, c, s, h, p=cfg.jitter_p))
    if cfg.gray_p > 0:
        ops.append(K.RandomGrayscale(p=cfg.gray_p))
    if blur_p > 0:
        k = max(3, int(0.1 * size) // 2 * 2 + 1)
        ops.append(K.RandomGaussianBlur((k, k), tuple(cfg.blur_sigma), p=blur_p))
    if solarize_p > 0:  # fixed threshold 0.5 as in PIL's ImageOps.solarize(128)
        ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))
    return K.AugmentationSequential(*ops)


class LoaderCrops:
    """DataLoader-worker transform: full uint8 (3, H, W) image -> one uint8 crop per view.

    Each view's ``RandomResizedCrop`` (``torchvision.transforms.v2``, antialiased) takes its size,
    scale and ratio from ``cfg.crop_specs()`` / ``cfg.ratio`` and its resampling from
    ``cfg.interpolation``, so the loader and the device pipelines share one recipe.
    """

    def __init__(self, cfg: ViewConfig):
        from torchvision.transforms import InterpolationMode, v2

        self.cfg = cfg
        mode = InterpolationMode(cfg.interpolation)
        self.crops = [
            v2.RandomResizedCrop(size, scale=scale, ratio=tuple(cfg.ratio), interpolation=mode, antialias=True)
            for size, scale in cfg.crop_specs()
        ]

    def __call__(self, img: torch.Tensor) -> list[torch.Tensor]:
        return [crop(img) for crop in self.crops]


class ViewGenerator:
    """Make the recipe's views of a uint8 batch on ``device``; see the module docstring."""

    def __init__(self, recipe: Union[str, ViewConfig], image_size: int, mean, std, device="cpu"):
        self.cfg = recipe if isinstance(recipe, ViewConfig) else view_config(recipe, image_size)
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        cfg = self.cfg
        if cfg.interpolation not in ("bilinear", "bicubic"):
            raise ConfigError(f"interpolation {cfg.interpolation!r} is not supported; use 'bilinear' or 'bicubic'.")
        blur, sol = cfg.per_view(cfg.blur_p, "blur_p"), cfg.per_view(cfg.solarize_p, "solarize_p")
        self.specs = cfg.crop_specs()
        # consecutive views with the same parameters share one pipeline call (on a repeated batch,
        # or on their loader crops concatenated); (count, crop on device, loader-cropped) per group
        self.groups: list[tuple[int, object, object]] = []
        keys: list = []
        for (size, scale), b, s in zip(self.specs, blur, sol):
            key = (size, scale, b, s)
            if keys and keys[-1] == key:
                count, crop_here, after_crop = self.groups[-1]
                self.groups[-1] = (count + 1, crop_here, after_crop)
            else:
                keys.append(key)
                self.groups.append(
                    (
                        1,
                        _pipeline(cfg, size, scale, b, s).to(self.device),
                        _pipeline(cfg, size, scale, b, s, crop=False).to(self.device),
                    )
                )

    def loader_crops(self) -> LoaderCrops:
        """The worker transform that cuts this recipe's crops from full decoded images."""
        return LoaderCrops(self.cfg)

    def __call__(self, batch, generator: Optional[torch.Generator] = None):
        """Views of ``batch`` as normalised float tensors, large first: ``batch`` is uint8
        (N, 3, H, W), or a list of uint8 batches already cropped, one per view."""
        if isinstance(batch, (list, tuple)):
            self._check_crops(batch)
        elif batch.ndim != 4 or batch.shape[1] != 3:
            raise DataError(f"views need a batch (N, 3, H, W), got shape {tuple(batch.shape)}.")
        if generator is None:
            return self._views(batch)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return self._views(batch)

    def _check_crops(self, crops) -> None:
        want = [(3, size, size) for size, _ in self.specs]
        got = [tuple(c.shape[1:]) if c.ndim == 4 else tuple(c.shape) for c in crops]
        if got != want:
            raise DataError(
                f"the loader's crops have shapes {got} but the {self.cfg.name!r} views need "
                f"(N, {want}); build the training dataset with training_dataset(dataset, views)."
            )

    @torch.no_grad()
    def _views(self, batch) -> list[torch.Tensor]:
        cropped = isinstance(batch, (list, tuple))
        if cropped:
            parts = [c.to(self.device, non_blocking=True) for c in batch]
            n = parts[0].shape[0]
        else:
            x = batch.to(self.device, non_blocking=True).float().div_(255.0)
            n = x.shape[0]
        out: list[torch.Tensor] = []
        i = 0
        for count, crop_here, after_crop in self.groups:
            if cropped:
                xs = (parts[i] if count == 1 else torch.cat(parts[i : i + count])).float().div_(255.0)
                pipe = after_crop
            else:
                xs, pipe = (x if count == 1 else x.repeat(count, 1, 1, 1)), crop_here
            i += count
            v = (pipe(xs).clamp_(0.0, 1.0) - self.mean) / self.std
            out.extend(v.split(n) if count > 1 else [v])
        return out


def make_views(recipe, info, image_size, device, audio=None, fields=None):
    """The trainer's views: ``AudioViews(audio)`` (two crops) for an audio dataset
    (``info.modality == "audio"``; a multi-crop recipe, SwAV's or DINO's, is a ConfigError), else
    ``ViewGenerator(recipe, image_size, info.mean, info.std)`` (``fields``: the recipe's fields for
    this run, ``view_config``'s)."""
    if getattr(info, "modality", "image") == "audio":
        from e2mc.data.audioviews import AudioViews

        spec = METHODS.get(recipe) if isinstance(recipe, str) else None
        if spec is not None and spec.view_recipe.get("n_small"):
            two = ", ".join(n for n, m in METHODS.items() if not m.view_recipe.get("n_small"))
            raise ConfigError(
                f"{recipe}'s views are multi-crop (small crops besides the two large ones); audio views are two "
                f"crops of one recording: use --method {two.replace(', ', '/')}"
            )
        return AudioViews(audio, n_views=2, device=device)
    if fields is not None:
        recipe = view_config(recipe, image_size, fields)
    return ViewGenerator(recipe, image_size, info.mean, info.std, device)


def training_dataset(dataset, views):
    """The dataset the training loader reads for ``views`` (see the module docstring): a copy of
    a per-item-decoding dataset (``with_transform``) whose items are ``(list of uint8 crops, label)``
    cut from the full image (audio: one crop per view of the segment, ``AudioCrops``); any other
    dataset (or a custom views callable) unchanged."""
    if hasattr(views, "loader_crops") and hasattr(dataset, "with_transform"):
        return dataset.with_transform(views.loader_crops())
    return dataset


def _stats(info_or_mean_std):
    if hasattr(info_or_mean_std, "mean"):
        return info_or_mean_std.mean, info_or_mean_std.std
    mean, std = info_or_mean_std
    return mean, std


def eval_transform(
    batch: torch.Tensor, info_or_mean_std, image_size: Optional[int] = None, crop_pct: float = 0.875
) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float normalised, resized and centre-cropped to ``image_size``; an
    audio dataset's waveforms (``info.modality == "audio"``) pass as float, unchanged.

    When the shorter side exceeds ``image_size / crop_pct`` it is first resized to that
    (antialiased; 224 -> 256 as in ImageNet evaluation); when it is below ``image_size`` it is
    resized up to ``image_size``; then the centre ``image_size`` square is cut. With
    ``image_size=None`` only square images pass unchanged; others are centre-cropped square.
    """
    if getattr(info_or_mean_std, "modality", "image") == "audio":
        return batch.float()
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise DataError(f"eval_transform needs (N, 3, H, W), got shape {tuple(batch.shape)}.")
    mean, std = _stats(info_or_mean_std)
    x = batch.float().div(255.0)
    h, w = x.shape[-2:]
    size = int(image_size) if image_size else min(h, w)
    short = min(h, w)
    target = None
    if short > round(size / crop_pct):
        target = int(round(size / crop_pct))
    elif short < size:
        target = size
    if target is not None:
        nh, nw = (
            (target, max(target, round(w * target / h))) if h <= w else (max(target, round(h * target / w)), target)
        )
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=target < short).clamp_(
            0.0, 1.0
        )
        h, w = nh, nw
    top, left = (h - size) // 2, (w - size) // 2
    x = x[..., top : top + size, left : left + size]
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s
