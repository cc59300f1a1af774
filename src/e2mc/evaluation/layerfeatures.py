"""Features of several layers of one backbone from ONE forward pass per batch, cached per layer.

``extract_layer_features(model, dataset, layers, token_pooling=...)`` hooks the selected
intermediate layers (:class:`e2mc.evaluation.layers.Taps`), runs the model's usual forward
(``model.embed``, plus the projector when asked) once per batch and writes every layer into its
own cache entry (:mod:`e2mc.evaluation.features`' entries, locks and resumption). A layer's key is
the final features' key plus ``{"layer": name, "pooling": ...}``; the final layer (``final``, or a
ResNet's last stage, whose average pool IS the backbone's output) keeps the key
:func:`~e2mc.evaluation.features.extract_features` uses, so its entry is shared with plain
evaluations. Layers whose entries are complete are read, not recomputed; the forward runs only
when one is missing, from the fewest rows any missing entry holds.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Sequence

import torch

from e2mc.evaluation.features import (
    FeatureSet,
    _Entry,
    _fill,
    _forward,
    _lock,
    _Memory,
    cache_key,
    entry_path,
    prepare,
)
from e2mc.evaluation.layers import Layer, Taps


def layer_key_obj(final_key: dict, layer: Layer, token_pooling: str) -> dict:
    """The cache key object of ``layer``: the final features' own for the final layer, else the
    backbone's key with the layer and its pooling added."""
    if layer.final:
        return final_key
    return {**final_key, "which": ["backbone"], "layer": layer.name, "pooling": layer.pooling(token_pooling)}


@torch.no_grad()
def extract_layer_features(
    model,
    dataset,
    layers: Sequence[Layer],
    *,
    token_pooling: str = "cls",
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    which: Sequence[str] = ("backbone",),
    amp_dtype=None,
    transform=None,
    cache_dir=None,
    use_cache: bool = True,
    cache_key_parts: Sequence[str] = (),
    num_workers: int = 0,
    model_hash: str | None = None,
    cache_dtype: str = "float16",
) -> dict[str, FeatureSet]:
    """``{layer name: FeatureSet}`` (features under ``"backbone"``; the final layer also holds
    ``which``'s projector) for ``layers`` from :func:`e2mc.evaluation.layers.resolve_layers`."""
    which, device = tuple(which), torch.device(device)
    model, transform, amp, final_key = prepare(
        model, dataset, which, model_hash, transform, amp_dtype, device, cache_dtype, cache_key_parts
    )
    n = len(dataset)
    outputs = {la.name: (which if la.final else ("backbone",)) for la in layers}
    keys = {la.name: layer_key_obj(final_key, la, token_pooling) for la in layers}
    result: dict[str, FeatureSet] = {}
    with contextlib.ExitStack() as stack:
        sinks: dict = {}
        for la in layers:
            path = entry_path(cache_dir, cache_key(keys[la.name]))
            cached = use_cache and _lock(stack, path)
            sink = _Entry.open(path, outputs[la.name], n, cache_dtype) if cached else None
            if sink is not None and sink.complete:
                feats, labels = sink.result()
                meta = {**keys[la.name], "cached": True, "resumed_from": None}
                result[la.name] = FeatureSet(feats, labels, cache_key(keys[la.name]), meta)
            else:
                sinks[la.name] = (path, cached, sink)
        if not sinks:
            return {la.name: result[la.name] for la in layers}
        start = min(s.rows if s is not None else 0 for _, _, s in sinks.values())
        multi = _Layers(sinks, outputs, n, cache_dtype)
        data = dataset if start == 0 else torch.utils.data.Subset(dataset, range(start, n))
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        final_which = next((outputs[la.name] for la in layers if la.final), ("backbone",))
        hooked = [la for la in layers if la.name in sinks]
        embed = functools.partial(_embed_layers, model, hooked, token_pooling, transform, final_which, device, amp)
        was_training = model.training
        model.eval().to(device)
        try:
            _fill(loader, embed, multi, None, start, n, cache_dtype)
        finally:
            model.train(was_training)
        for name, (feats, labels) in multi.result().items():
            meta = {**keys[name], "cached": False, "resumed_from": start or None}
            result[name] = FeatureSet(feats, labels, cache_key(keys[name]), meta)
    return {la.name: result[la.name] for la in layers}


def _embed_layers(model, layers, token_pooling, transform, which, device, amp, images) -> dict[str, torch.Tensor]:
    """One batch: the model's outputs (``which``) and each hooked layer's pooled output, float32 on
    the CPU; intermediate layers under ``"layer:<name>"``."""
    x = transform(images.to(device, non_blocking=True))
    backbone = getattr(model, "backbone", model)
    with Taps(backbone, layers, token_pooling) as taps:
        with torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = _forward(model, x, which)
    out = {**out, **{f"layer:{k}": v for k, v in taps.out.items()}}
    return {k: v.float().flatten(1).cpu() for k, v in out.items()}


class _Layers:
    """One sink per layer (a cache entry, or memory), fed from one batch's outputs."""

    def __init__(self, sinks: dict, outputs: dict, n: int, dtype: str):
        self.sinks, self.outputs, self.n, self.dtype = sinks, outputs, n, dtype
        self.live: dict = {name: s for name, (_, _, s) in sinks.items() if s is not None}

    @property
    def on_disk(self) -> bool:
        return any(isinstance(s, _Entry) for s in self.live.values())

    def _part(self, name: str, out: dict) -> dict:
        return (
            {w: out[w] for w in self.outputs[name]}
            if f"layer:{name}" not in out
            else {"backbone": out[f"layer:{name}"]}
        )

    def write(self, s: int, out: dict, labels: torch.Tensor) -> None:
        for name, (path, cached, _) in self.sinks.items():
            part = self._part(name, out)
            if name not in self.live:
                dims = {w: f.shape[1] for w, f in part.items()}
                entry = _Entry.create(path, self.outputs[name], dims, self.n, self.dtype) if cached else None
                self.live[name] = entry or _Memory(dims, self.n, self.dtype)
            self.live[name].write(s, part, labels)

    def record(self, rows: int, complete: bool = False) -> None:
        for sink in self.live.values():
            if not (complete is False and getattr(sink, "rows", 0) > rows):  # never record fewer rows
                sink.record(rows, complete=complete)

    def delete(self) -> None:
        for sink in self.live.values():
            if isinstance(sink, _Entry):
                sink.delete()

    def result(self) -> dict:
        return {name: sink.result() for name, sink in self.live.items()}
