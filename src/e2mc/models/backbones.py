"""Backbones: feature extractors that map images (N, 3, H, W) to pooled features (N, out_dim).

Three families, one entry point, :func:`build_backbone`:

* torchvision ResNets (``resnet18/34/50/101/152``, ``wide_resnet50_2``, ``wide_resnet101_2``).
  Module names are torchvision's (``conv1, bn1, layer1..4``) and the classifier is removed
  (``fc = nn.Identity()``), so an official VICReg ``resnet50.pth`` loads with no key mapping.
* ``resnet_mini`` (or ``resnet_mini:16-32-64``): a small CIFAR-style ResNet, one BasicBlock per
  stage, strides 1/2/2, 3x3 stem; fast on CPU at 16-32 px. Same key naming scheme.
* ``timm:<name>``: any timm model, created with ``num_classes=0`` (pooled features);
  ``timm:<name>:key=value,...`` passes constructor options the weights cannot show (MoCo v3's
  ViT-S: ``timm:vit_small_patch16_224:num_heads=12``); ``pos_offset=<float>,pos_antialias=<bool>`` and
  ``patch_resize=<bool>`` are e2mc's own (:mod:`e2mc.models.posembed`: the position embedding resampled as an official
  code does), and a method's ``timm_options`` sets them for the timm names of its releases.
* ``hf:<folder or hub name>`` / ``aves:<file.pt>``: speech and bioacoustic encoders
  (:mod:`e2mc.models.audio`): waveforms (N, samples) -> mean+std pooled frames (N, 2 x hidden).

Nothing is downloaded unless ``pretrained=True``.
"""

from __future__ import annotations

import torch
from torch import nn

from e2mc.errors import CheckpointError, ConfigError
from e2mc.methods import METHODS
from e2mc.models.posembed import OPTIONS, use_offset_resampling, use_patch_resize

TORCHVISION_RESNETS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
)
MINI_DEFAULT_WIDTHS = (32, 64, 128)


class ResNetMini(nn.Module):
    """Small CIFAR-style ResNet: 3x3 stem, one BasicBlock per stage, strides 1, 2, 2, ...

    Key names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1`` ...), so the weight
    detection in :mod:`e2mc.models.adapters` reads it like any other ResNet.

    Example:
        >>> net = ResNetMini((16, 32, 64))
        >>> net(torch.zeros(2, 3, 16, 16)).shape
        torch.Size([2, 64])
    """

    def __init__(self, widths: tuple[int, ...] = MINI_DEFAULT_WIDTHS):
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        widths = tuple(int(w) for w in widths)
        if not widths or any(w <= 0 for w in widths):
            raise ConfigError(f"resnet_mini widths must be positive integers, got {widths}")
        self.widths = widths
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_ch = widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or in_ch != width:
                down = nn.Sequential(nn.Conv2d(in_ch, width, 1, stride, bias=False), nn.BatchNorm2d(width))
            self.add_module(f"layer{i + 1}", nn.Sequential(BasicBlock(in_ch, width, stride, down)))
            in_ch = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return pooled features (N, widths[-1])."""
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(len(self.widths)):
            x = getattr(self, f"layer{i + 1}")(x)
        return torch.flatten(self.avgpool(x), 1)


def parse_mini_widths(arch: str) -> tuple[int, ...]:
    """Widths of a ``resnet_mini[:w1-w2-...]`` arch string."""
    if arch == "resnet_mini":
        return MINI_DEFAULT_WIDTHS
    spec = arch.split(":", 1)[1] if ":" in arch else ""
    try:
        return tuple(int(w) for w in spec.split("-"))
    except ValueError:
        raise ConfigError(f"bad resnet_mini width spec {arch!r}; write e.g. 'resnet_mini:16-32-64'") from None


def canonical_arch(arch: str) -> str:
    """Arch string in the form weights are compared by (``resnet_mini`` -> ``resnet_mini:32-64-128``;
    a timm arch without its constructor options, which weights do not show)."""
    if arch == "resnet_mini" or arch.startswith("resnet_mini:"):
        return "resnet_mini:" + "-".join(str(w) for w in parse_mini_widths(arch))
    if arch.startswith("timm:"):
        return "timm:" + timm_options(arch[5:])[0]
    return arch


def timm_options(name: str) -> tuple[str, dict]:
    """``(model name, constructor options)`` of ``<name>[:key=value,...]`` (values: int, float,
    true/false, else text)."""
    name, _, spec = name.partition(":")
    opts: dict = {}
    for item in filter(None, spec.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.isidentifier():
            raise ConfigError(f"bad timm option {item!r} in {name}:{spec}; write timm:<name>:key=value,key=value")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        opts[key] = {"true": True, "false": False}.get(value, value) if isinstance(value, str) else value
    return name, opts


def _torchvision_resnet(arch: str, cifar_stem: bool, pretrained: bool, **kw) -> nn.Module:
    import torchvision

    net = torchvision.models.get_model(arch, weights=None, **kw)
    source = None
    if pretrained:  # torch.hub's cache, downloaded there when absent; the CIFAR stem stays random
        from e2mc.models.hub import torchvision_state_dict

        sd, source = torchvision_state_dict(arch)
        net.load_state_dict(sd, strict=True)
    net.fc = nn.Identity()
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    net.out_dim = net.inplanes  # channels after layer4 == fc.in_features
    net.pretrained_source = source
    return net


def _timm_model(name: str, pretrained: bool, img_size: int | None, **kw) -> nn.Module:
    import timm

    name, opts = timm_options(name)
    kw = {**method_timm_options(name), **opts, **kw}
    offset, antialias, resize = (kw.pop(k, None) for k in OPTIONS)  # e2mc's own (models.posembed)
    if not timm.is_model(name):
        raise ConfigError(f"timm has no model {name!r}; see timm.list_models() for the names")
    if img_size is not None:
        kw["img_size"] = img_size
    if name.startswith(("vit_", "deit")):  # multi-crop: any input size, the position embedding resampled
        kw.setdefault("dynamic_img_size", True)  # (timm skips it at the native size: same output there)
    source = None
    if pretrained:  # timm's own loader: Hugging Face hub / its URL, or their local caches
        from e2mc.models.hub import timm_pretrained

        net, source = timm_pretrained(name, **kw)
    else:
        try:
            net = timm.create_model(name, pretrained=False, num_classes=0, **kw)
        except TypeError as exc:
            raise ConfigError(f"timm model {name!r} does not accept {sorted(kw)}: {exc}") from exc
    if offset is not None or antialias is not None:
        use_offset_resampling(net, offset or 0.0, bool(antialias))
    if resize:
        use_patch_resize(net)
    net.out_dim = int(net.num_features)
    net.pretrained_source = source
    return net


def method_timm_options(name: str) -> dict:
    """The options the registered methods declare for the timm model ``name`` (``Method.timm_options``:
    ``{fnmatch pattern of the name without its pretrained tag: options}``, e.g. the position-embedding
    resampling of the method's released ViTs)."""
    from fnmatch import fnmatchcase

    base = name.split(".", 1)[0]
    out: dict = {}
    for method in METHODS.values():
        for pattern, opts in method.timm_options.items():
            if fnmatchcase(base, pattern):
                out.update(opts)
    return out


def build_backbone(
    arch: str,
    *,
    cifar_stem: bool = False,
    pretrained: bool = False,
    img_size: int | None = None,
    **kw,
) -> nn.Module:
    """Build a backbone; its ``forward`` maps (N, 3, H, W) to pooled features (N, out_dim).

    Args:
        arch: ``resnet18|34|50|101|152``, ``wide_resnet50_2``, ``wide_resnet101_2``,
            ``resnet_mini`` / ``resnet_mini:16-32-64``, or ``timm:<model name>``.
        cifar_stem: torchvision ResNets only: 3x3 stride-1 ``conv1`` without bias and no max-pool
            (for 32 px images). ``resnet_mini`` always has a 3x3 stem.
        pretrained: the library's pretrained weights (:mod:`e2mc.models.hub`: from its cache, else
            downloaded; weights that cannot be had raise :class:`CheckpointError`); with
            ``cifar_stem`` the 3x3 stem stays random. Default: random init, nothing is downloaded.
        img_size: timm only: input size the model is built for (e.g. 32 for a ViT on CIFAR).
        **kw: passed to the torchvision / timm constructor (e.g. ``dynamic_img_size=True``).

    Returns:
        the module, with attributes ``out_dim`` and ``pretrained_source`` (``None``, or where the
        pretrained weights came from: name, url, cache_path, sha256).

    Example:
        >>> net = build_backbone("resnet18", cifar_stem=True)
        >>> net.out_dim
        512
    """
    if not isinstance(arch, str) or not arch:
        raise ConfigError(f"arch must be a non-empty string, got {arch!r}")
    if arch.startswith("timm:"):
        return _timm_model(arch[5:], pretrained, img_size, **kw)
    from e2mc.models.audio import build_audio_backbone, is_audio_arch

    if is_audio_arch(arch):
        return build_audio_backbone(arch, pretrained=pretrained)
    if arch == "resnet_mini" or arch.startswith("resnet_mini:"):
        if pretrained:
            raise CheckpointError(f"{arch} has no pretrained weights; use random:{arch} (pretrained=False)")
        return ResNetMini(parse_mini_widths(arch))
    if arch in TORCHVISION_RESNETS:
        return _torchvision_resnet(arch, cifar_stem, pretrained, **kw)
    raise ConfigError(
        f"unknown arch {arch!r}; use one of {', '.join(TORCHVISION_RESNETS)}, "
        "resnet_mini[:w1-w2-w3], timm:<model name>, hf:<folder or hub name> or aves:<file.pt>"
    )
