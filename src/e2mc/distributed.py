"""torch.distributed helpers shared by the criteria and the training loop.

Everything here degrades to the identity when torch.distributed is not initialised (or has a
single process), so the same code runs on one CPU, one GPU, or many ranks under ``torchrun``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import torch
import torch.distributed as dist

from e2mc.errors import ConfigError


def is_distributed() -> bool:
    """True when torch.distributed is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else CPU; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device cuda asked for but CUDA is not available; use --device cpu")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


class _GatherWithGrad(torch.autograd.Function):
    """All-gather of one or more tensors (same dim 0) in ONE collective; the backward sends each
    rank the gradient of its own slice through ONE all-reduce.

    Every rank computes the same loss on the gathered batch; DDP averages the parameter
    gradients over ranks. The gradient that reaches rank r's slice is therefore the sum over
    ranks of d(loss_j)/d(x_r), which is what ``all_reduce`` of the full gradient followed by
    slicing gives. With DDP's averaging this equals the gradient of the single-process loss on
    the concatenated batch. Several tensors are packed column-wise into one (N, F) buffer.

    ``equal=True``: every rank holds the same N (no sizes exchange, no host sync); otherwise the
    sizes are exchanged and read on the host (uneven batches: pad, gather, trim).
    """

    @staticmethod
    def forward(ctx, equal: bool, *xs: torch.Tensor):  # type: ignore[override]
        ws, n = dist.get_world_size(), xs[0].shape[0]
        flat = torch.cat([x.reshape(n, -1) for x in xs], dim=1).contiguous()
        if equal:
            sizes = [n] * ws
        else:
            size = torch.tensor([n], dtype=torch.long, device=flat.device)
            all_sizes = [torch.zeros_like(size) for _ in range(ws)]
            dist.all_gather(all_sizes, size)
            sizes = torch.cat(all_sizes).tolist()
            if max(sizes) > n:
                flat = torch.cat([flat, flat.new_zeros((max(sizes) - n, flat.shape[1]))])
        out = [torch.empty_like(flat) for _ in range(ws)]
        dist.all_gather(out, flat)
        full = torch.cat([o[:k] for o, k in zip(out, sizes)])
        ctx.sizes, ctx.rank, ctx.shapes = sizes, dist.get_rank(), [x.shape[1:] for x in xs]
        ctx.widths = [math.prod(s) for s in ctx.shapes]
        return tuple(p.reshape((full.shape[0],) + tuple(s)) for p, s in zip(full.split(ctx.widths, dim=1), ctx.shapes))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):  # type: ignore[override]
        total = sum(ctx.sizes)
        ref = next(g for g in grads if g is not None)
        flat = torch.cat(
            [(g.reshape(total, -1) if g is not None else ref.new_zeros((total, w))) for g, w in zip(grads, ctx.widths)],
            dim=1,
        ).contiguous()
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        mine = flat[start : start + ctx.sizes[ctx.rank]]
        return (None,) + tuple(
            p.reshape((mine.shape[0],) + tuple(s)) for p, s in zip(mine.split(ctx.widths, dim=1), ctx.shapes)
        )


class _Scope:
    """The gathers of one training step (see ``shared_gather``)."""

    def __init__(self, groups: Sequence[Sequence[torch.Tensor]], equal: bool) -> None:
        self.groups = [list(g) for g in groups]
        self.equal = equal
        self.done: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(x) -> (x, gathered x)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        hit = self.done.get(id(x))
        if hit is not None and hit[0] is x:
            return hit[1]
        group = next((g for g in self.groups if any(t is x for t in g)), [x])
        if len({t.dtype for t in group}) > 1 or len({t.shape[0] for t in group}) > 1:
            group = [x]
        for t, gathered in zip(group, _GatherWithGrad.apply(self.equal, *group)):
            self.done[id(t)] = (t, gathered)
        return self.done[id(x)][1]


_SCOPES: list[_Scope] = []


@contextlib.contextmanager
def shared_gather(*groups: Sequence[torch.Tensor], equal_sizes: bool = True) -> Iterator[None]:
    """One step's gathers, done once and shared by every criterion called inside the block.

    Inside the block, ``gather_with_grad(x)`` gathers ``x``'s whole group (a sequence of
    tensors with the same dim 0 and dtype, e.g. the views ``[z1, z2]``) in ONE all_gather the
    first time any of them is asked for, and returns the same gathered tensor to every later
    call; the backward is then ONE all_reduce for the group, whatever the number of criteria
    that used it. A tensor in no group is gathered alone (once). Nothing is gathered that no
    criterion asks for. ``equal_sizes``: every rank's batch has the same size (the trainer's
    ``ShardedEpochSampler`` drops incomplete global batches), so no sizes are exchanged and
    nothing is read back to the host. Identity-keyed: a tensor derived from a view (``z.float()``)
    is a new tensor and is gathered on its own.
    """
    _SCOPES.append(_Scope(groups, equal_sizes))
    try:
        yield
    finally:
        _SCOPES.pop()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (N_r, ...) from every rank along dim 0, keeping the autograd graph.

    Without an initialised multi-process group this returns ``x`` unchanged. Inside
    ``shared_gather`` the gather is shared (see there); outside, per-rank sizes may differ.
    """
    if not is_distributed():
        return x
    if _SCOPES:
        return _SCOPES[-1].gather(x)
    return _GatherWithGrad.apply(False, x)[0]


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather without gradient (for metrics and queues); identity on one process."""
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(bool(_SCOPES and _SCOPES[-1].equal), x.detach())[0]


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op on one process); returns ``x``."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x
