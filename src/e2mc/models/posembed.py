"""Position embeddings of timm ViTs resampled as the original research code does.

timm resamples a ViT's position embedding for another input size with ``F.interpolate(size=...,
mode="bicubic", antialias=True)``. Some official codes do it otherwise, and their weights were
trained and evaluated that way: ``interpolate_pos_encoding`` scales the stored grid by a scale
factor ``(new + offset) / old`` (``offset`` 0.1, the "historical kludge" of facebookresearch/dino
issue 8) without antialiasing; with ``offset`` 0 it asks for the output size. The timm options
``pos_offset`` and ``pos_antialias`` (``timm:<name>:pos_offset=0.1,pos_antialias=false``, or a
method's ``timm_options`` for the names of its releases) select that resampling:
:func:`use_offset_resampling` gives the model a ``_pos_embed`` that always resamples from the
stored grid this way. The weights and their keys do not change.

``patch_resize=true`` (:func:`use_patch_resize`): an input whose sides are not multiples of the
patch size is resized (bicubic, antialiased) to the nearest multiples before the patch embedding,
where timm and the official code refuse it: DINO's 96 px local crops reach a patch-14 ViT at 98 px
(DINOv2's own local crop size), 32 px images at 28 px.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from e2mc.errors import ConfigError

OPTIONS = ("pos_offset", "pos_antialias", "patch_resize")  # the timm options read here (not passed to timm)


def resample(pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int], offset: float, antialias: bool):
    """The patch part of a position embedding (1, old_h * old_w, D) resampled to (1, new_h * new_w, D):
    bicubic, ``scale_factor = (new + offset) / old`` when ``offset`` else ``size = new``."""
    if tuple(old) == tuple(new):
        return pos
    dtype, dim = pos.dtype, pos.shape[-1]
    grid = pos.float().reshape(1, old[0], old[1], dim).permute(0, 3, 1, 2)
    if offset:
        kw = {"scale_factor": ((new[0] + offset) / old[0], (new[1] + offset) / old[1])}
    else:
        kw = {"size": tuple(new)}
    grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **kw)
    if tuple(grid.shape[-2:]) != tuple(new):
        raise ConfigError(f"position grid {tuple(old)} resampled to {tuple(grid.shape[-2:])}, not {tuple(new)}")
    return grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(dtype)


def _offset_pos_embed(self, x: torch.Tensor) -> torch.Tensor:
    """timm ``VisionTransformer._pos_embed`` with :func:`resample` in place of timm's resampling."""
    if not self.dynamic_img_size or self.pos_embed is None:
        return _classes()["OffsetPosViT"].__mro__[1]._pos_embed(self, x)
    B, H, W, C = x.shape
    prefix = 0 if self.no_embed_class else self.num_prefix_tokens
    pos = self.pos_embed
    old = tuple(self.patch_embed.grid_size)
    if (H, W) != old:  # the official code returns the stored embedding at the stored grid only
        pos = torch.cat([pos[:, :prefix], resample(pos[:, prefix:], old, (H, W), *self.pos_resampling)], dim=1)
    x = x.reshape(B, H * W, C)
    tokens = [t.expand(B, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
    if self.no_embed_class:
        x = torch.cat(tokens + [x + pos], dim=1)
    else:
        x = torch.cat(tokens + [x], dim=1) + pos
    return self.pos_drop(x)


def _resized_patch_forward(self, x: torch.Tensor) -> torch.Tensor:
    """timm ``PatchEmbed.forward`` of ``x`` resized to the nearest multiples of the patch size."""
    (h, w), (ph, pw) = x.shape[-2:], self.patch_size
    size = (max(ph, round(h / ph) * ph), max(pw, round(w / pw) * pw))
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    return _classes()["ResizedPatchEmbed"].__mro__[1].forward(self, x)


_CLASSES: dict = {}


def _classes() -> dict:
    """``OffsetPosViT`` (timm's ``VisionTransformer``) and ``ResizedPatchEmbed`` (timm's
    ``PatchEmbed``), made on first use (timm is imported then); importable by name from this module
    (``__getattr__``), so a pickled model loads again."""
    if not _CLASSES:
        from timm.layers import PatchEmbed
        from timm.models.vision_transformer import VisionTransformer

        for name, base, fn in (
            ("OffsetPosViT", VisionTransformer, {"_pos_embed": _offset_pos_embed}),
            ("ResizedPatchEmbed", PatchEmbed, {"forward": _resized_patch_forward}),
        ):
            _CLASSES[name] = type(name, (base,), {**fn, "__module__": __name__, "__qualname__": name})
    return _CLASSES


def __getattr__(name: str):
    if name in ("OffsetPosViT", "ResizedPatchEmbed"):
        return _classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def use_offset_resampling(net, offset: float, antialias: bool):
    """Give the timm ViT ``net`` the official resampling (in place, again allowed; returns ``net``)."""
    cls = _classes()["OffsetPosViT"]
    if type(net) not in (cls, cls.__mro__[1]):
        raise ConfigError(
            f"pos_offset/pos_antialias apply to timm VisionTransformer models, not {type(net).__name__}; drop them"
        )
    net.__class__ = cls
    net.pos_resampling = (float(offset), bool(antialias))
    return net


def use_patch_resize(net):
    """Give the timm ViT ``net``'s patch embedding :func:`_resized_patch_forward` (in place)."""
    cls = _classes()["ResizedPatchEmbed"]
    embed = getattr(net, "patch_embed", None)
    if type(embed) not in (cls, cls.__mro__[1]):
        raise ConfigError(
            f"patch_resize applies to timm ViTs with timm's PatchEmbed, not {type(net).__name__}; drop it"
        )
    embed.__class__ = cls
    return net
