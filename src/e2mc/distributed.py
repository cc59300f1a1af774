"""torch.distributed helpers shared by the criteria and the training loop.

Everything here degrades to the identity when torch.distributed is not initialised (or has a
single process), so the same code runs on one CPU, one GPU, or many ranks under ``torchrun``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when torch.distributed is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sends each rank the gradient of its own slice.

    Every rank computes the same loss on the gathered batch; DDP averages the parameter
    gradients over ranks. The gradient that reaches rank r's slice is therefore the sum over
    ranks of d(loss_j)/d(x_r), which is what ``all_reduce`` of the full gradient followed by
    slicing gives. With DDP's averaging this equals the gradient of the single-process loss on
    the concatenated batch.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ws = dist.get_world_size()
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(ws)]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
        sizes_list = [int(s.item()) for s in sizes]
        max_n = max(sizes_list)
        padded = x.contiguous()
        if x.shape[0] < max_n:  # uneven last batches: pad, gather, trim
            pad = x.new_zeros((max_n - x.shape[0],) + tuple(x.shape[1:]))
            padded = torch.cat([padded, pad], dim=0)
        out = [torch.empty_like(padded) for _ in range(ws)]
        dist.all_gather(out, padded)
        ctx.sizes = sizes_list
        ctx.rank = dist.get_rank()
        return torch.cat([o[:n] for o, n in zip(out, sizes_list)], dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (N_r, ...) from every rank along dim 0, keeping the autograd graph.

    Without an initialised multi-process group this returns ``x`` unchanged.
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather without gradient (for metrics and queues); identity on one process."""
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x.detach())


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op on one process); returns ``x``."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x
