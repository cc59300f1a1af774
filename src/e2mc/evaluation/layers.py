"""Which intermediate layers of a backbone can be evaluated, and how each is pooled to (N, D).

A small registry keyed by backbone type: :func:`register_family` adds ``(name, match, layers)``
where ``match(backbone) -> bool`` recognises the type and ``layers(backbone) -> [Layer, ...]``
lists its evaluable layers in forward order. Each :class:`Layer` names a submodule (its path in
``backbone.named_modules()``, which is also the name users give to ``--layers``) and how its
output is pooled: ``"conv"`` ((N, C, H, W) -> global average pool), ``"tokens"`` ((N, T, D) with
``prefix`` leading non-patch tokens, the CLS token first when ``cls``: CLS token, mean of the other
tokens (registers excluded), or both, by ``eval.token_pooling``), ``"final"`` (the backbone's own
output: exactly today's features, cached under today's key). Built in: torchvision ResNets and
e2mc's ``resnet_mini`` (``layer1``..``layerK``, the last one served by the backbone's output, which
is its global average pool; timm ResNets add ``final``, their pooling head), timm ViTs (``blocks.0``..``blocks.{L-1}``, then ``final``: the
model's norm and head pooling). An audio encoder declares its layers with one call, e.g.::

    register_family("wav2vec2", lambda bb: isinstance(bb, MyEncoder),
                    lambda bb: [Layer(f"layers.{i}", "tokens", prefix=0, cls=False)
                                for i in range(len(bb.layers))] + [Layer("final", "final")])

(frames (N, T, D) are "tokens" without prefix tokens: ``mean`` pooling averages over time).
e2mc's own audio encoders (:class:`e2mc.models.audio.AudioEncoder`) are the built-in ``audio``
family: their ``layers()`` (``features``, ``layer1``..``layerL``) as ``"frames"`` layers, each
``hidden_states`` entry pooled as the bioacoustics papers do, mean and standard deviation over
frames (``pool_frames``), whatever ``eval.token_pooling`` says; all come from the one forward of
the encoder (its ``keep_hidden``), and the last one is the encoder's output (``final``).

Selection strings (``eval.layers``; CLI ``--layers``): ``all``, names (``layer1,layer3``,
``blocks.3,blocks.11``, ``final``), or indices into the family's list (``-1``: the last). Torch is
imported inside the functions that run hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from e2mc.errors import ConfigError

TOKEN_POOLINGS = ("cls", "mean", "cls+mean")


@dataclass(frozen=True)
class Layer:
    name: str  # submodule path ("layer2", "blocks.3") or "final" (the backbone's output)
    kind: str  # "conv" | "tokens" | "final"
    prefix: int = 0  # tokens: leading non-patch tokens (CLS + registers)
    cls: bool = False  # tokens: the first token is a CLS token
    final: bool = False  # served by the backbone's output (bit for bit today's features)
    index: int = 0  # frames: position in the audio encoder's hidden_states

    def pooling(self, token_pooling: str) -> str:
        """What identifies this layer's pooling in the cache key and the results."""
        return {"conv": "avg", "tokens": token_pooling, "frames": "mean+std"}.get(self.kind, "model")


@dataclass(frozen=True)
class Family:
    name: str
    match: Callable
    layers: Callable


FAMILIES: dict[str, Family] = {}


def register_family(name: str, match: Callable, layers: Callable) -> None:
    """Add a backbone type's layers (first match wins, in registration order)."""
    if name in FAMILIES:
        raise ValueError(f"layer family {name!r} is registered twice")
    FAMILIES[name] = Family(name, match, layers)


def _resnet_stages(bb) -> list[str]:
    out, i = [], 1
    while hasattr(bb, f"layer{i}"):
        out.append(f"layer{i}")
        i += 1
    return out


def _is_resnet(bb) -> bool:
    return hasattr(bb, "conv1") and (hasattr(bb, "avgpool") or hasattr(bb, "global_pool")) and bool(_resnet_stages(bb))


def _resnet_layers(bb) -> list[Layer]:
    """Stages ``layer1..K``; the last is the output where the model ends in its average pool
    (torchvision, ``resnet_mini``), else (timm's pooling head) the output is ``final``."""
    stages = _resnet_stages(bb)
    if hasattr(bb, "avgpool"):
        return [Layer(s, "conv", final=(s == stages[-1])) for s in stages]
    return [Layer(s, "conv") for s in stages] + [Layer("final", "final", final=True)]


def _is_vit(bb) -> bool:
    return hasattr(bb, "blocks") and hasattr(bb, "num_prefix_tokens") and hasattr(bb, "patch_embed")


def _vit_layers(bb) -> list[Layer]:
    cls = getattr(bb, "cls_token", None) is not None
    prefix = int(bb.num_prefix_tokens)
    blocks = [Layer(f"blocks.{i}", "tokens", prefix=prefix, cls=cls) for i in range(len(bb.blocks))]
    return blocks + [Layer("final", "final", final=True)]


def _is_audio(bb) -> bool:
    return getattr(bb, "input_ndim", 4) == 2 and hasattr(bb, "hidden_states") and hasattr(bb, "keep_hidden")


def _audio_layers(bb) -> list[Layer]:
    names = bb.layers()
    return [Layer(n, "frames", final=(i == len(names) - 1), index=i) for i, n in enumerate(names)]


register_family("resnet", _is_resnet, _resnet_layers)  # torchvision ResNets, resnet_mini
register_family("vit", _is_vit, _vit_layers)  # timm VisionTransformer (registers: prefix tokens)
register_family("audio", _is_audio, _audio_layers)  # e2mc.models.audio.AudioEncoder: mean+std of frames


def family_of(backbone) -> Family:
    """The registered family of ``backbone``; ConfigError (one line, listing its submodules) if none."""
    for fam in FAMILIES.values():
        if fam.match(backbone):
            return fam
    names = [n for n, _ in backbone.named_children()]
    raise ConfigError(
        f"per-layer evaluation does not know the backbone {type(backbone).__name__} (its layers: "
        f"{', '.join(names) or 'none'}); evaluate without --layers, or declare its layers with "
        "e2mc.evaluation.layers.register_family"
    )


def resolve_layers(backbone, spec: str, token_pooling: str = "cls") -> list[Layer]:
    """The layers ``spec`` selects (``all``, names, indices such as ``-1``), in forward order."""
    if token_pooling not in TOKEN_POOLINGS:
        raise ConfigError(f"eval.token_pooling={token_pooling!r} is not valid; give one of {', '.join(TOKEN_POOLINGS)}")
    fam = family_of(backbone)
    avail = fam.layers(backbone)
    names = [layer.name for layer in avail]
    items = [s.strip() for s in str(spec).split(",") if s.strip()]
    if not items:
        raise ConfigError(f"--layers is empty; give all, -1 or names from: {', '.join(names)}")
    chosen: set[str] = set()
    for item in items:
        if item == "all":
            chosen.update(names)
        elif item in names:
            chosen.add(item)
        elif item.lstrip("-").isdigit() and -len(names) <= int(item) < len(names):
            chosen.add(names[int(item)])
        else:
            raise ConfigError(
                f"layer {item!r} is not a layer of this {fam.name} backbone; give all, an index "
                f"(-1: the last) or names from: {', '.join(names)}"
            )
    out = [layer for layer in avail if layer.name in chosen]
    if token_pooling.startswith("cls") and any(la.kind == "tokens" and not la.cls for la in out):
        raise ConfigError(
            f"eval.token_pooling={token_pooling} needs a CLS token, which this backbone has not; "
            "use --set eval.token_pooling=mean"
        )
    return out


def pool(layer: Layer, x, token_pooling: str):
    """One layer's output pooled to (N, D) (float32 is left to the caller)."""
    import torch

    if isinstance(x, (tuple, list)):  # modules returning (hidden, extras): the hidden states
        x = x[0]
    if layer.kind == "conv":
        return torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
    if layer.kind == "tokens":
        parts = []
        if token_pooling in ("cls", "cls+mean"):
            parts.append(x[:, 0])
        if token_pooling in ("mean", "cls+mean"):
            parts.append(x[:, layer.prefix :].mean(dim=1))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    if layer.kind == "frames":  # (N, F, H) -> mean and std over frames, as AudioEncoder pools its output
        from e2mc.models.audio import pool_frames

        return pool_frames(x)
    raise ValueError(f"layer {layer.name} of kind {layer.kind} is not pooled from a hook")


class Taps:
    """Forward hooks on the selected intermediate layers of ``backbone``: after one forward,
    ``taps.out`` holds each hooked layer's pooled output (a context manager removing the hooks).
    ``"frames"`` layers (audio encoders) are read from the encoder's ``kept_hidden`` by one hook
    on the encoder itself."""

    def __init__(self, backbone, layers, token_pooling: str):
        self.backbone, self.token_pooling = backbone, token_pooling
        self.layers = [la for la in layers if not la.final]
        self.out: dict = {}
        self.handles: list = []

    def __enter__(self) -> "Taps":
        mods = dict(self.backbone.named_modules())
        frames = [la for la in self.layers if la.kind == "frames"]
        for la in self.layers:
            if la.kind != "frames":
                self.handles.append(mods[la.name].register_forward_hook(self._hook(la)))
        if frames:
            self.backbone.keep_hidden = True
            self.handles.append(self.backbone.register_forward_hook(self._frames_hook(frames)))
        return self

    def _frames_hook(self, layers):
        def hook(module, _inputs, _output):
            for la in layers:
                self.out[la.name] = pool(la, module.kept_hidden[la.index], self.token_pooling)
            module.kept_hidden = ()

        return hook

    def _hook(self, layer: Layer):
        def hook(_module, _inputs, output):
            self.out[layer.name] = pool(layer, output, self.token_pooling)

        return hook

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        if hasattr(self.backbone, "keep_hidden"):
            self.backbone.keep_hidden = False
