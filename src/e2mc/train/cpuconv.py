"""A PyTorch CPU half-precision hazard the trainer refuses: a strided convolution on a 1-pixel-wide input.

Measured (``benchmarks/repro_cpu_bf16_conv.py`` -> ``benchmarks/results/cpu_bf16_conv.md``, torch
2.14.1, AMD EPYC): under CPU autocast to bfloat16, the weight gradient of a ``Conv2d`` with kernel 3,
stride 2, padding 1 whose input is 1 pixel wide (1 x 1: ResNet-18's ``layer4.0.conv1`` on 16 px
images with the ImageNet stem; also 4 x 1) differs between identical calls (1 to 11 of 11 repeats,
varying from run to run, by up to 1.7e24 or inf; 1.7e21 once in the trainer's case): uninitialised memory. 1 pixel high but
wider (1 x 4, 1 x 8), 2 x 2 and more, stride 1 and fp32 are exact. In e2mc it showed as probes that diverged at random
(``layer4.0.conv1.weight is not finite``) and runs that could not be repeated.

``watch_strided_1px(model)`` is a context manager that records, during one forward, the names of
the strided ``Conv2d`` modules (kernel > 1) whose input is 1 pixel wide; the ``Trainer``
runs the first forward of a CPU half-precision run under it and raises ``ConfigError`` when any is found.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def _risky(m: nn.Conv2d) -> bool:
    return max(m.stride) > 1 and max(m.kernel_size) > 1


@contextlib.contextmanager
def watch_strided_1px(model: nn.Module):
    """Yield a list that fills, during the block's forwards, with ``(name, input H x W)`` of every
    strided ``Conv2d`` (kernel > 1) fed a 1-pixel-wide input (``module.`` prefix removed)."""
    hits: list[tuple[str, str]] = []
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and _risky(m):

            def hook(mod, args, name=name):
                x = args[0] if args else None
                if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[-1] == 1:  # 1 pixel wide
                    if all(n != name for n, _ in hits):
                        hits.append((name.removeprefix("module."), f"{x.shape[-2]} x {x.shape[-1]}"))

            handles.append(m.register_forward_pre_hook(hook))
    try:
        yield hits
    finally:
        for h in handles:
            h.remove()


def refusal(hits: list[tuple[str, str]], precision: str, sizes: list[int]) -> str:
    """The one-line error for ``hits`` (``watch_strided_1px``) at view sizes ``sizes``."""
    name, hw = hits[0]
    more = f" (and {len(hits) - 1} more)" if len(hits) > 1 else ""
    return (
        f"train.precision={precision} on CPU: {name}{more} is a strided convolution fed a {hw} input at "
        f"this image size (views of {', '.join(map(str, sorted(set(sizes))))} px); PyTorch's CPU "
        f"{precision} backward of such a convolution returns nondeterministic, sometimes huge weight "
        "gradients (benchmarks/repro_cpu_bf16_conv.py). Use train.precision=fp32, or a larger "
        "data.image_size (e.g. the checkpoint's training resolution)"
    )
