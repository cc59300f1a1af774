"""What an e2mc training checkpoint saves and restores, in one typed place: ``RunState``.

``RunState.checkpoint`` makes the checkpoint dict (plain tensors and builtins, loadable with
``weights_only=True``; its keys are listed in docs/architecture.md) and ``RunState.restore``
loads one back. The ``Trainer`` keeps its run's state as ``trainer.state`` and reads and writes
its fields there (``trainer.state.global_step += 1``); ``trainer.model``, ``optimizer``, ``epoch``
and ``global_step`` are read-only properties over it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from e2mc.config import RunConfig
from e2mc.methods import Method
from e2mc.models.audio import encoder_item
from e2mc.models.model import SSLModel
from e2mc.train.distributed import DistInfo


@dataclass
class RunState:
    """The trained objects, the progress and the origin of a run: everything a checkpoint holds
    besides the run's settings (``cfg``) and its processes' RNG streams."""

    model: SSLModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    scaler: torch.amp.GradScaler
    method: Method | None = None  # the run's method (``e2mc.methods``): says how its own state is saved
    method_state: Any = None  # the method's own state (``Method.build_state``), when it keeps one
    # progress (checkpoint keys "epoch", "step", "step_in_epoch", "run_step", "warmup_done")
    epoch: int = 0  # completed epochs of this run (a continued run counts from 0)
    global_step: int = 0  # optimiser steps of the main phase, over all epochs
    step_in_epoch: int = 0  # batches of the current epoch already trained (mid-epoch resume)
    run_step: int = 0  # steps of the main phase in this process (a method's hooks may count by it)
    warmup_done: bool = False  # the heads warm-up of a continued run is over
    # origin: the file the run started from (its epoch, and its layout for `export --to original`)
    source_format: str | None = None
    source_epoch: int | None = None
    source_layout: dict = field(default_factory=dict)
    auto_cov_weight: float | None = None  # addon.cov_weight=auto's measured value (train.calibrate)
    data_fingerprint: dict | None = None  # the training data's identity (data.fingerprint), checked on resume

    def checkpoint(self, cfg: RunConfig, dist: DistInfo, per_device_batch: int, metrics_rows: int | None) -> dict:
        """The e2mc checkpoint dict (a collective under torchrun: every rank's RNG state and the
        method's own state are gathered)."""
        import e2mc

        rng = capture_rng()
        if dist.world_size > 1:
            import torch.distributed as tdist

            rng_all: list = [None] * dist.world_size
            tdist.all_gather_object(rng_all, rng)
        else:
            rng_all = [rng]
        sched = self.scheduler.state_dict() if self.scheduler is not None else {}
        model = self.model
        return {
            "e2mc_version": e2mc.__version__,
            "format": "e2mc",
            "method": cfg.method.name,
            "arch": model.arch,
            "cifar_stem": bool(model.cifar_stem),
            "head_sizes": dict(model.head_sizes),
            **encoder_item(model.backbone, model.arch),  # an audio encoder's config (models.audio.encoder_record)
            "model": model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "optimizer_params": optimizer_param_names(self.optimizer, model),
            "scheduler": {k: v for k, v in sched.items() if plain(v)},
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "epoch": self.epoch,
            "step": self.global_step,
            "step_in_epoch": self.step_in_epoch,
            "run_step": self.run_step,
            "warmup_done": bool(self.warmup_done),
            "rng": {"per_rank": rng_all},
            "world_size": dist.world_size,
            "config": cfg.to_dict(),
            "source_format": self.source_format,
            "source_epoch": self.source_epoch,
            "source_layout": dict(self.source_layout),
            "metrics_rows": metrics_rows,
            "auto_cov_weight": self.auto_cov_weight,
            "data_fingerprint": dict(self.data_fingerprint) if self.data_fingerprint else None,
            # the method's own state as one process would hold it (gathered: a collective), under its key
            **self._method_state_item(per_device_batch),
        }

    def _method_state_item(self, per_device_batch: int) -> dict:
        m = self.method
        if m is None or m.state_key is None:
            return {}
        return {m.state_key: m.save_state(self.method_state, per_device_batch)}

    def restore(
        self, state: dict, dist: DistInfo, per_device_batch: int, seed: int, log: Callable[[str], None]
    ) -> None:
        """Load a checkpoint dict made by ``checkpoint`` (the weights, optimiser, scheduler, scaler,
        the method's own state, progress and this rank's RNG streams; the origin and ``auto_cov_weight`` are read
        when the run is built)."""
        self.restore_training(state, per_device_batch, log)
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict({**self.scheduler.state_dict(), **state["scheduler"]})
        self.epoch, self.global_step = int(state["epoch"]), int(state["step"])
        self.step_in_epoch, self.run_step = int(state["step_in_epoch"]), int(state["run_step"])
        self.warmup_done = bool(state["warmup_done"])
        per_rank = state["rng"]["per_rank"]
        if len(per_rank) == dist.world_size:
            restore_rng(per_rank[dist.rank])
        else:  # another world size: exact continuation is impossible; reseed per rank
            torch.manual_seed(seed + 1000 * self.epoch + dist.rank)
            log(
                f"resuming on {dist.world_size} processes from a checkpoint of {len(per_rank)}: "
                "RNG streams reseeded (the run is no longer bit-identical to an uninterrupted one)"
            )

    def restore_training(self, state: dict, per_device_batch: int, log: Callable[[str], None]) -> None:
        """Load what training changes from a checkpoint dict: the weights, the optimiser, the scaler and
        the method's own state (the collapse guard's rollback; ``restore`` adds progress and RNG)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        match_param_layout(self.optimizer)
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        m = self.method
        if m is not None and m.state_key is not None:
            m.load_state(self.method_state, state.get(m.state_key), per_device_batch, log)


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor shaped like its parameter (momentum, Adam moments) the
    parameter's memory format, as a fresh optimiser's ``zeros_like(p)`` has: a loaded state keeps
    the strides of the file, and reductions over it (LARS's norms) round by layout."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            for k, v in (st or {}).items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def plain(obj: Any) -> bool:
    """True when ``obj`` holds only tensors and builtins (safe for ``weights_only`` loading)."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(obj, (list, tuple)):
        return all(plain(o) for o in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, (str, int)) and plain(v) for k, v in obj.items())
    return False


def optimizer_param_names(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> list[str]:
    """The model's parameter names in the optimiser's order (its state_dict's positions)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names.get(id(p), "?") for g in optimizer.param_groups for p in g["params"]]


def capture_rng() -> dict:
    """Torch, CUDA, NumPy and Python RNG states as tensors/lists (weights_only-safe)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Inverse of ``capture_rng``."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
