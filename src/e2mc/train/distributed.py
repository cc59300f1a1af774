"""Process-group setup/teardown for ``torchrun`` and DDP wrapping.

``torchrun --nproc_per_node=K e2mc continue CKPT ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; ``setup()`` reads them and initialises the
default group (NCCL on CUDA, gloo on CPU). Multi-node runs need nothing special: start torchrun
on every node with ``--nnodes N --node_rank i --master_addr HOST --master_port PORT`` (or
``--rdzv_endpoint``) and the same env arrives here. Without these variables everything is a
single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from e2mc.distributed import pick_device
from e2mc.errors import ConfigError


@dataclass
class DistInfo:
    """Where this process sits: rank, world size, local rank, device, and whether we own the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False
    cpu_group: Any = None  # a gloo group for small CPU agreements (None: the default group is gloo)

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the only rank that writes files, logs and progress bars)."""
        return self.rank == 0


# Set once this process has made a process group. The gloo abort at the interpreter's shutdown
# ("terminate called without an active exception") came from DDP wrappers freed there, which
# ``teardown`` now frees before; what else may hold a group (a caller's own DDP or groups) is why
# the CLI's console script still ends through exit_if_process_group (a script of one's own can too).
GLOO_THREADS_LEFT = False


def exit_if_process_group(code: int = 0) -> None:
    """End this process at once with ``code`` (after flushing logs and the standard streams) when
    it made a process group (through e2mc, or its caller's still open); return otherwise. Everything of a run is closed and fsynced by then
    (checkpoints, metrics, the run lock); what ``os._exit`` skips is the interpreter's shutdown,
    where torch's surviving gloo threads can abort the process after a finished run."""
    if not (GLOO_THREADS_LEFT or dist.is_initialized()):  # a group made here, or by the caller
        return
    import logging
    import sys

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def setup(device: str = "auto") -> DistInfo:
    """Initialise the default process group from torchrun's env (no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world <= 1:
        return DistInfo(device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        for key in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
            if key not in os.environ:
                raise ConfigError(f"WORLD_SIZE={world} but {key} is not set; launch with torchrun")
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
        owns = True
        global GLOO_THREADS_LEFT
        GLOO_THREADS_LEFT = True
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=dev,
        owns_group=owns,
        cpu_group=_cpu_group(),
    )


_CPU_GROUPS: dict = {}


def _cpu_group() -> Any:
    """The group for small CPU tensors (per-step flags): None when the default group is gloo, else a
    gloo side group, made once per default group (``new_group`` is collective: every rank calls it)."""
    if "gloo" in str(dist.get_backend()).lower():
        return None
    world = dist.group.WORLD
    if id(world) not in _CPU_GROUPS:
        _CPU_GROUPS[id(world)] = (world, dist.new_group(backend="gloo"))
    return _CPU_GROUPS[id(world)][1]


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    """Wrap ``model`` in DDP when running on several processes (identity otherwise).

    Only parameters with ``requires_grad`` at wrap time are synchronised, so the loop re-wraps
    after the heads warm-up unfreezes the backbone.
    """
    if info.world_size <= 1:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # no buffer broadcast per forward (BN statistics stay per rank, as in the reference code); newer
    # torch names it forward_sync_buffers and deprecates broadcast_buffers with a warning per rank.
    # (It syncs buffers once at wrap time: harmless, every rank holds the same model then.)
    import inspect

    key = (
        "forward_sync_buffers"
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        else "broadcast_buffers"
    )
    return ddp(model, device_ids=ids, **{key: False})


def convert_sync_bn(model: nn.Module, info: DistInfo, log: Callable[[str], None] | None = None) -> nn.Module:
    """Replace BatchNorm layers by SyncBatchNorm (``model.sync_bn``) where it can work: several
    processes on CUDA devices. Elsewhere the model is returned as it is and ``log`` (rank 0's log
    line) says once why: DDP refuses SyncBatchNorm on CPU ("only work with GPU modules"), and one
    process has nothing to synchronise; BatchNorm statistics stay per process."""
    if info.world_size > 1 and info.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if log is not None:
        if info.world_size <= 1:
            why = "one process, nothing to synchronise"
        else:
            why = (
                f"SyncBatchNorm needs CUDA devices and this run's {info.world_size} processes are on {info.device.type}"
            )
        log(f"warning: model.sync_bn ignored ({why}); BatchNorm statistics stay per process")
    return model


def barrier(info: DistInfo) -> None:
    """Wait for all ranks (no-op on one process)."""
    if info.world_size > 1 and dist.is_initialized():
        dist.barrier()


def any_flags(flags: Sequence[bool], info: DistInfo) -> list[bool]:
    """For each flag, True when it is set on any rank (so every rank stops/saves at the same step).

    One all_reduce of a small CPU tensor (on GPUs through ``info.cpu_group``, a gloo group), so
    reading the result never waits for the device.
    """
    if info.world_size <= 1:
        return [bool(f) for f in flags]
    t = torch.tensor([1.0 if f else 0.0 for f in flags])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=info.cpu_group)
    return [v > 0 for v in t.tolist()]


def any_flag(flag: bool, info: DistInfo) -> bool:
    """True when ``flag`` is set on any rank (see ``any_flags``)."""
    return any_flags((flag,), info)[0]


def mean_over_ranks(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The element-wise mean of ``t`` over ranks (``t`` itself on one process)."""
    if info.world_size <= 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / info.world_size


def main_first(info: DistInfo, fn) -> None:
    """Run ``fn()`` on rank 0 while the other ranks wait; if it raises, every rank raises.

    Rank 0 re-raises its own exception; the others raise an ``E2MCError`` pointing at rank 0's
    message, so no rank hangs in a later collective.
    """
    err = None
    if info.is_main:
        try:
            fn()
        except Exception as exc:  # re-raised below, after telling the other ranks
            err = exc
    if any_flag(err is not None, info):
        if err is not None:
            raise err
        from e2mc.errors import E2MCError

        raise E2MCError(f"rank {info.rank}: rank 0 failed while preparing or writing the run folder (see its error)")


def teardown(info: DistInfo) -> None:
    """Destroy the process group if ``setup`` created it, after freeing what no longer has a
    reference but still holds the group: a DDP wrapper (its reducer) sits in reference cycles, so
    without a collection here it is freed during the interpreter's shutdown, where gloo aborts the
    process ("terminate called without an active exception": 7 of 80 finished 2-process CPU runs
    before, 0 of 80 after; ``benchmarks/results/gloo_exit_abort.md``). The caller drops its
    own references to its DDP wrappers first."""
    if info.world_size > 1:
        import gc

        gc.collect()
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


class ShardedEpochSampler(torch.utils.data.Sampler):
    """Per-epoch permutation (seeded by ``seed + epoch``) cut into global batches, sharded by rank.

    Each global batch of ``batch_size * world_size`` indices is split into contiguous per-rank
    slices, so the batch the criteria gather across ranks is exactly the batch one process with
    ``batch_size * world_size`` would see, in the same order. Incomplete global batches are
    dropped. ``set_epoch(epoch, start_batch)`` skips the first ``start_batch`` batches (mid-epoch
    resume).
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        """Full global batches per epoch."""
        return self.n // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the epoch's permutation and the first batch to yield."""
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        gb, b = self.batch_size * self.world_size, self.batch_size
        for i in range(self.start_batch, self.batches_per_epoch):
            yield from perm[i * gb + self.rank * b : i * gb + (self.rank + 1) * b].tolist()

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch) * self.batch_size


def per_sample_norms(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm of ``model`` (in place) by a norm of each sample on its own:
    ``GroupNorm(1, C)`` for 2-d maps, ``LayerNorm`` for vectors; returns ``model``.

    With BatchNorm each rank normalises only its own part of the batch, so N processes cannot
    equal one process on the concatenated batch; with per-sample norms they can. The
    equivalence tests and the GPU check pass it as ``Trainer(model_fn=per_sample_norms)``.
    """
    for name, child in model.named_children():
        if isinstance(child, (nn.BatchNorm2d, nn.BatchNorm1d)):
            c = child.num_features
            new = nn.GroupNorm(1, c) if isinstance(child, nn.BatchNorm2d) else nn.LayerNorm(c)
            frozen = child.weight is not None and not child.weight.requires_grad  # e.g. a momentum teacher's
            setattr(model, name, new.requires_grad_(not frozen))
        else:
            per_sample_norms(child)
    return model


def mirrored_views(images: torch.Tensor) -> list[torch.Tensor]:
    """Two deterministic views of a uint8 batch (the image, normalised, and its mirror image):
    every image gets the same views whichever rank draws it (``Trainer(views_fn=mirrored_views)``)."""
    v = (images.float() / 255.0 - 0.5) / 0.25
    return [v, v.flip(3)]
