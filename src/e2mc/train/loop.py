"""The training loop: ``Trainer(config).fit()``.

``TrainerSetup`` builds the model, data, views, criteria, optimiser and run folder;
this module runs the steps: heads warm-up (backbone frozen, BN in eval mode), epochs with AMP
and DDP, logging without per-step host syncs (loss terms and one flag saying whether the
criteria's inputs were finite are kept as device tensors and read every ``log_every`` steps,
where the NaN/Inf check also happens; under torchrun they are averaged over ranks there, so a
local loss is logged as its global mean), label-free metrics per epoch,
atomic checkpoints (per ``checkpoint_every_epochs``, at the end, on SIGUSR1, and on
SIGTERM/SIGINT before a clean exit).

Resume is exact, also mid-epoch: a checkpoint stores the epoch, the batch position inside it,
the optimiser/scheduler/scaler state and every rank's RNG states; the sampler's order is a pure
function of ``(seed, epoch)``. On one CPU with ``train.deterministic`` a resumed run gives
bit-identical weights to one never stopped. A run killed before its first checkpoint cannot be
resumed (``--resume`` refuses and deletes nothing); start it again with ``out.overwrite``.
Resume falls back to the newest usable ``epoch_N.pt`` when ``last.pt`` is missing or unreadable.
No checkpoint holding a NaN/Inf parameter, buffer or optimiser value is ever written.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from e2mc.config import RunConfig
from e2mc.criteria import default_m
from e2mc.criteria.entropy import deferred_finite_checks
from e2mc.data import build_dataset, eval_transform, make_views, training_dataset
from e2mc.errors import (
    ConfigError,
    CriterionInputError,
    OutOfMemory,
    RankStopped,
    TrainingDiverged,
    is_out_of_memory,
)
from e2mc.methods import StepContext, get_method
from e2mc.models.adapters import check_version
from e2mc.models.audio import check_input
from e2mc.models.checkpoints import load_model
from e2mc.models.model import SSLModel
from e2mc.train import distributed as D
from e2mc.train import monitor
from e2mc.train import run as R
from e2mc.train.cpuconv import refusal, watch_strided_1px
from e2mc.train.datacheck import check_data, reschedule
from e2mc.train.guard import EVENTS_FILE, Guard, GuardSteps
from e2mc.train.optim import (
    build_optimizer,
    build_scheduler,
    optimizer_template,
    restore_optimizer_state,
    scaled_lr,
)
from e2mc.train.state import RunState

INPUT_CHECK = "_inputs_finite"  # per-step flag: 0 when the criteria's inputs were finite, NaN otherwise


_PEER_LOST = ("connection reset by peer", "connection closed by peer", "broken pipe", "connection refused")


def _peer_lost(exc: BaseException) -> bool:
    """True when a collective failed because another process of the run is gone (gloo's socket
    errors, NCCL's or the store's ``DistError``s)."""
    import torch.distributed as tdist

    text = str(exc).lower()
    return isinstance(exc, getattr(tdist, "DistError", ())) or any(t in text for t in _PEER_LOST)


class TrainerSetup:
    """Builds everything a run needs from a ``RunConfig`` (the ``Trainer`` adds the steps).

    What a checkpoint saves and restores is ``self.state`` (a ``RunState``, ``e2mc.train.state``):
    the trainer reads and writes its fields there (``self.state.global_step``); ``model``,
    ``optimizer``, ``epoch`` and ``global_step`` also read as the trainer's own properties. The run
    folder (lock, checkpoints, metrics log, run files) is ``self.run``, a ``run.RunFolder``.
    """

    state: RunState

    @property
    def model(self) -> SSLModel:
        """The trained model (``state.model``, unwrapped)."""
        return self.state.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The run's optimiser (``state.optimizer``)."""
        return self.state.optimizer

    @property
    def epoch(self) -> int:
        """Completed epochs of this run (``state.epoch``)."""
        return self.state.epoch

    @property
    def global_step(self) -> int:
        """Optimiser steps of the main phase (``state.global_step``)."""
        return self.state.global_step

    def __init__(
        self, config: RunConfig, model_fn: Callable | None = None, views_fn: Callable | None = None, quiet: bool = False
    ) -> None:
        cfg = self.cfg = config
        self.quiet = quiet
        self.method = get_method(cfg.method.name)
        self.dist = D.setup(cfg.train.device)
        self.device = self.dist.device
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.precision]
        if cfg.train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        self.run_dir = Path(cfg.out.dir)
        self.run = R.RunFolder(self.run_dir, self.dist, self.log)
        found = self.run.open(cfg)  # takes the run folder's lock
        try:
            self._build(found, model_fn, views_fn)
        except BaseException:
            self.run.discard()  # the lock released; a folder this attempt made and left empty removed
            raise

    def _build(self, found: tuple | None, model_fn: Callable | None, views_fn: Callable | None) -> None:
        """Seed; build the data, the model, the losses and the optimisation; then the run's state
        (restored from ``found`` on resume) and what the run writes."""
        seed = self.cfg.train.seed
        torch.manual_seed(seed)  # same model init on every rank
        random.seed(seed)
        np.random.seed(seed)
        self._build_data(views_fn)
        data_print, data_change = check_data(self.dataset, found, self.cfg, self.log)
        model, origin = self._build_model(found, model_fn)
        self.criterion = self.method.build_criterion(self.cfg).to(self.device)
        method_state = self.method.build_state(self.cfg, model, self.dist.world_size, self.global_batch, self.log)
        if method_state is not None:
            method_state = method_state.to(self.device)
            if found is None:  # a new run: the state the source file holds (e.g. DINO's centre)
                self.method.init_state(method_state, self.report, self.cfg, self.log)
        self._optimizer_template = None
        optimizer, scheduler, scaler = self._build_optimisation(model, restore_source=found is None)
        if self._optimizer_template is not None:  # for export --to original (the source's optimiser layout)
            origin["source_layout"] = {**origin.get("source_layout", {}), "optimizer": self._optimizer_template}
        self.state = RunState(
            model, optimizer, scheduler, scaler, self.method, method_state, **origin, data_fingerprint=data_print
        )
        self.state.auto_cov_weight = self._auto_cov_weight(found)
        self.addon = self.method.build_addon(self.cfg, cov_weight=self.state.auto_cov_weight).to(self.device)
        self.stop_requested = self.save_requested = False
        self._pending: list[dict] = []
        self._t_last = time.perf_counter()
        if found is not None:
            ckpt, state = found
            self.state.restore(state, self.dist, self.per_device_batch, seed, self.log)
            self.log(f"resumed from {ckpt}: epoch {self.state.epoch}, step {self.state.global_step}")
            if data_change:
                bpe, warm = self.sampler.batches_per_epoch, self.schedule_warmup
                self.total_steps = reschedule(self.state, state, data_change, self.cfg.train, bpe, warm, self.log)
        self.ddp_model = D.wrap_ddp(self.model, self.dist)
        self._build_outputs(None if found is None else found[1])

    def _build_data(self, views_fn: Callable | None) -> None:
        """The dataset, its sampler (sharded over the ranks), the views and the loader."""
        cfg, d = self.cfg, self.cfg.data
        self.dataset = build_dataset(
            d.dataset,
            d.split,
            root=d.root,
            image_size=d.image_size,
            cache_dir=d.cache_dir,
            on_error=d.on_error,
            limit=d.limit,
            download=d.download,
            audio=d.audio,
        )
        info = self.dataset.info
        self.image_size = d.image_size or info.image_size
        self.per_device_batch = cfg.optim.batch_size
        self.global_batch = self.per_device_batch * self.dist.world_size
        self.sampler = D.ShardedEpochSampler(
            len(self.dataset), self.per_device_batch, cfg.train.seed, self.dist.rank, self.dist.world_size
        )
        self._check_batch()
        fields = None if cfg.method.views else self.method.view_fields(cfg)  # the method's own recipe, for this run
        self.views = views_fn or make_views(  # an audio dataset: AudioViews (data.audio)
            cfg.method.views or self.method.views, info, self.image_size, self.device, audio=d.audio, fields=fields
        )
        # streaming datasets cut the views' crops from the full image in the workers
        self.loader = DataLoader(
            training_dataset(self.dataset, self.views),
            batch_size=self.per_device_batch,
            sampler=self.sampler,
            num_workers=d.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg.train.seed),
            persistent_workers=d.num_workers > 0,
        )

    def _build_model(self, found: tuple | None, model_fn: Callable | None) -> tuple[SSLModel, dict]:
        """The model, ready on its device, and its origin (``RunState``'s ``source_*`` fields)."""
        cfg = self.cfg
        model, origin = self._load_model(found)
        if model_fn is not None:
            model = model_fn(model)
        self.method.check_model(model)
        check_input(model.backbone, self.dataset.info)  # images vs waveforms, the sample rate
        if cfg.model.sync_bn:
            model = D.convert_sync_bn(model, self.dist, self.log)
        # one memory format whatever the tensors' strides in the file (load_model assigns the file's
        # tensors): a resumed run rebuilds the model, so a layout left to the file differs on resume
        # and the convolutions round differently (resume no longer bit-exact)
        fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        model.to(self.device, memory_format=fmt)
        self.need_warmup = bool(self.heads_built) and cfg.mode == "continue" and cfg.train.head_warmup_steps > 0
        if self.heads_built and cfg.mode == "continue" and not self.need_warmup and found is None:
            self.log(
                f"note: fresh heads ({', '.join(self.heads_built)}) and train.head_warmup_steps=0: the backbone takes "
                "the random heads' gradients from the first step; --set train.head_warmup_steps=N (e.g. 100-500) "
                "trains them first with the backbone frozen"
            )
        return model, origin

    def _build_optimisation(self, model: SSLModel, restore_source: bool) -> tuple:
        """``(optimizer, scheduler, scaler)`` at the scaled LR; ``restore_source``: a new run, which
        may start from the source checkpoint's optimiser state (``optim.restore_state``)."""
        cfg, o = self.cfg, self.cfg.optim
        self.lr = scaled_lr(o.lr, self.global_batch, o.base_batch, o.lr_scaling)
        optimizer = self.make_optimizer(model)
        if restore_source:
            self._restore_source_optimizer(optimizer, model)
        steps = self.sampler.batches_per_epoch * cfg.train.epochs
        total = min(steps, cfg.train.max_steps) if cfg.train.max_steps else steps
        self.total_steps = total  # for the ETA of the progress lines
        warm = min(int(round(o.warmup_epochs * self.sampler.batches_per_epoch)), max(total, 1))
        self.schedule_warmup = warm
        scheduler = build_scheduler(o.schedule, optimizer, total_steps=max(total, 1), warmup_steps=warm)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        return optimizer, scheduler, scaler

    def _build_outputs(self, resumed: dict | None) -> None:
        """The metrics log (cut back to the checkpoint ``resumed`` from), TensorBoard, the progress
        bar, the probe monitor and the run files (rank 0)."""
        cfg = self.cfg
        self.run.open_log(resumed, tensorboard=cfg.train.tensorboard)
        self.bar = None
        if self.dist.is_main and sys.stderr.isatty() and not self.quiet:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total_steps, initial=self.state.global_step, unit="step", dynamic_ncols=True)
        self.monitor = None
        if self.dist.is_main and cfg.train.probe_size > 1:
            info = self.dataset.info
            idx = monitor.probe_indices(len(self.dataset), cfg.train.probe_size, cfg.train.seed)
            self.monitor = monitor.ProbeMonitor(
                self.dataset,
                idx,
                lambda b: eval_transform(b, info, self.image_size),
                self.device,
                entropy_transform=cfg.addon.transform or self.method.e2mc_defaults[2],
            )
        s = self.state
        setup = {"world_size": self.dist.world_size, "per_device_batch": self.per_device_batch}
        setup.update({"global_batch": self.global_batch, "effective_lr": self.lr})
        origin = {"source_format": s.source_format, "source_epoch": s.source_epoch, "heads_built": self.heads_built}
        self.run.write_run_files(cfg, self.report, setup, {**origin, "device": str(self.device)})
        self.guard = Guard.for_run(self, resumed)
        if resumed is not None and self.guard.events:  # the events up to the checkpoint resumed from
            self.run.write_json(EVENTS_FILE, self.guard.events)

    def _auto_cov_weight(self, found: tuple | None) -> float | None:
        """``addon.cov_weight: auto`` (``e2mc.train.calibrate``): the stored value on resume, else measured now."""
        a = self.cfg.addon
        if a.name != "e2mc" or a.cov_weight != "auto":
            return None
        if found is not None:
            stored = found[1].get("auto_cov_weight")
            if stored is None:
                raise ConfigError(
                    f"{found[0]} stores no measured cov_weight for addon.cov_weight=auto; resume with "
                    "the run's own config, or start a new --out"
                )
            return float(stored)
        from e2mc.train.calibrate import auto_cov_weight, measure_terms

        def step(images: Any, probe: Any) -> dict:  # the training step's loss, without its hooks
            return self.forward_loss(images, self.model, probe)

        base, cov = measure_terms(step, self.model, self.loader.dataset, self.per_device_batch, self.cfg, self.device)
        w = auto_cov_weight(base, cov, a.cov_fraction)
        self.log(
            f"addon.cov_weight=auto: base loss {base:.5g}, E2MC covariance {cov:.5g} on the start -> "
            f"cov_weight {w:.5g} (covariance term = {a.cov_fraction:g} x base loss)"
        )
        return w

    # ---------------------------------------------------------------- the step's loss (training and calibration)
    def step_context(self) -> StepContext:
        """What the method's loss and hooks see of this step (``e2mc.methods.StepContext``)."""
        return StepContext(self.state.model, self.state.method_state, self.state.run_step, self.cfg, self.total_steps)

    def forward_loss(self, images: Any, model: torch.nn.Module, addon: Any, ctx: StepContext | None = None) -> dict:
        """A step's loss terms: a uint8 batch (or per-view crops) -> the method's views on the device
        (in ``train.channels_last``'s layout) -> ``model`` under autocast -> ``method.compute_loss``
        with ``addon``. ``ctx``: a training step's (the method's ``before_forward`` runs first; a
        criterion's error on a non-finite model output is ``TrainingDiverged``); None: a
        measurement without hooks (``train.calibrate``)."""
        if isinstance(images, (list, tuple)):  # one uint8 batch per view, cropped in the loader
            views = self.views([x.to(self.device, non_blocking=True) for x in images])
        else:
            views = self.views(images.to(self.device, non_blocking=True))
        if self.cfg.train.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for v in views]
        if ctx is not None:
            self.method.before_forward(ctx)
        amp = self.amp_dtype
        check = amp is not None and self.device.type == "cpu" and not getattr(self, "_conv_checked", False)
        with watch_strided_1px(model) if check else contextlib.nullcontext([]) as hits:
            with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
                out = model(views)
        if check:  # the first forward of a CPU half-precision run (train/cpuconv.py)
            self._conv_checked = True
            if hits:
                sizes = [int(v.shape[-1]) for v in views if v.dim() == 4]
                raise ConfigError(refusal(hits, self.cfg.train.precision, sizes))
        try:
            return self.method.compute_loss(out, self.criterion, addon, ctx)
        except (CriterionInputError, RuntimeError) as exc:  # e.g. an SVD of NaN input
            if ctx is not None and any(not torch.isfinite(z).all() for z in out.get("z", out["features"])):
                raise self._diverged(self.state.global_step + 1, "model output", str(exc)) from exc
            raise

    def _diverged(self, step: int, term: str, detail: str) -> TrainingDiverged:
        """The error of a NaN/Inf ``term`` at ``step``, naming the last good checkpoint (the one resumed
        from or last written: both checked finite)."""
        good = self.run.last_good
        where = (
            f"the last good checkpoint is {good} (kept intact)"
            if good is not None
            else "no good checkpoint of this run exists yet (none was written)"
        )
        return TrainingDiverged(
            f"training diverged: {term} is not finite at step {step} ({detail}); {where}. Lower "
            "optim.lr, set train.grad_clip, use precision fp32/bf16 instead of fp16, or check the data",
            step=step,
            term=term,
        )

    def _load_model(self, found: tuple | None) -> tuple[SSLModel, dict]:
        """The model (from the checkpoint resumed, ``model.init``, or random) and its origin."""
        cfg, m = self.cfg, self.cfg.model
        self.heads_built: list = []
        self.report = None
        if found is not None:  # rebuild the architecture from the checkpoint; weights come in RunState.restore
            state = found[1]
            check_version(state.get("e2mc_version"))  # the rule of e2mc checkpoints (models.adapters)
            R.check_resume_config(state.get("config", {}), cfg)
            if state.get("encoder") is not None:  # an audio encoder: its own config, not its source's
                from e2mc.models.audio import remember

                remember(state["arch"], state["encoder"])
            model = SSLModel.build(
                cfg.method.name, state["arch"], cifar_stem=state["cifar_stem"], **state["head_sizes"]
            )
            return model, {
                "source_format": state.get("source_format"),
                "source_epoch": state.get("source_epoch"),
                "source_layout": dict(state.get("source_layout") or {}),
            }
        if cfg.mode == "pretrain" and m.init.startswith("random:"):
            model = SSLModel.build(
                cfg.method.name, m.arch or m.init.split(":", 1)[1], cifar_stem=m.cifar_stem, **m.head_sizes
            )
            return model, {"source_format": "random"}
        model, self.report = load_model(
            m.init,
            method=cfg.method.name,
            arch=m.arch,
            format=m.format,
            cifar_stem=m.cifar_stem or None,
            head_sizes=m.head_sizes or None,
            fresh_heads=m.fresh_heads,
        )
        self.heads_built = list(self.report.heads_built)
        # the loaded file's layout, so that `export --to original` can rewrite it
        layout = {k: v for k, v in self.report.layout.items() if isinstance(v, (str, bool, int, type(None)))}
        return model, {"source_format": self.report.format, "source_epoch": self.report.epoch, "source_layout": layout}

    def _probe_nonfinite(self) -> str | None:
        """What is not finite in the eval-mode output of the model about to be saved, on 8 fixed
        images (rank 0's model; fp32), else None. Catches weights that are finite but exploded
        (1e15-scale after a huge LR): they pass ``nonfinite`` yet give NaN features in evaluate."""
        if not self.dist.is_main:
            return None
        if getattr(self, "_sanity_images", None) is None:
            self._sanity_images = torch.stack([self.dataset[i][0] for i in range(min(8, len(self.dataset)))])
        x = eval_transform(self._sanity_images.to(self.device), self.dataset.info, self.image_size)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                f = self.model.backbone(x)
                z = self.model.projector(f) if self.model.projector is not None else None
        finally:
            self.model.train(was_training)
        for name, t in (("backbone features", f), ("projector output", z)):
            if t is not None and not bool(torch.isfinite(t).all()):
                return f"the eval-mode {name} of 8 fixed images"
        return None

    def _check_batch(self) -> None:
        n, gb = len(self.dataset), self.global_batch
        if self.sampler.batches_per_epoch == 0:
            raise ConfigError(
                f"the dataset has {n} images, fewer than one global batch of {gb}; "
                "lower optim.batch_size or use more data (data.limit)"
            )
        if gb < 2:
            raise ConfigError("the global batch must hold at least 2 images; raise optim.batch_size")
        if self.cfg.addon.name == "e2mc":
            m = self.cfg.addon.m if self.cfg.addon.m is not None else default_m(gb)
            if gb <= m:
                raise ConfigError(
                    f"E2MC's m-spacing entropy needs more samples than the spacing: global "
                    f"batch {gb} <= m={m}; raise optim.batch_size or lower addon.m"
                )

    def make_optimizer(self, model_or_params: Any) -> torch.optim.Optimizer:
        """The configured optimiser over a model or a parameter list (at the scaled LR)."""
        o = self.cfg.optim
        return build_optimizer(
            o.name,
            model_or_params,
            lr=self.lr,
            weight_decay=o.weight_decay,
            momentum=o.momentum,
            exclude_bias_and_norm=o.exclude_bias_and_norm,
        )

    def _restore_source_optimizer(self, optimizer: torch.optim.Optimizer, model: SSLModel) -> None:
        """``optim.restore_state``: load the source checkpoint's optimiser state into the new
        ``optimizer`` of ``model`` (continue mode; an e2mc resume restores its own state instead)."""
        report = self.report
        stored = report.optimizer_state if report is not None else None
        if not self.cfg.optim.restore_state:
            if stored is not None:
                self.log(
                    f"{report.path} stores an optimiser state; starting a fresh optimiser (optim.restore_state=false)"
                )
            return
        if stored is None:
            src = report.path if report is not None else self.cfg.model.init
            raise ConfigError(
                f"optim.restore_state=true but {src} stores no optimiser state; use a full "
                "checkpoint, or set optim.restore_state=false to start a fresh optimiser"
            )
        paired: list = []
        self.log(restore_optimizer_state(optimizer, model, stored, source=report.path, paired=paired))
        names = {id(p): n for n, p in model.named_parameters()}
        self._optimizer_template = optimizer_template(stored, [names[id(p)] for p in paired])


class Trainer(GuardSteps, TrainerSetup):
    """Runs one training run described by a ``RunConfig``.

    Args:
        config: the resolved ``RunConfig`` (see ``e2mc.config.load_config``).
        model_fn: optional ``(SSLModel) -> SSLModel`` applied right after the model is built or
            loaded (before the optimiser and DDP), e.g. to swap layers in experiments.
        views_fn: optional ``(uint8 batch on device) -> list of float views`` replacing the
            method's augmentation.

    Example:
        >>> cfg = load_config("digits_vicreg_pretrain", ["train.max_steps=2"])  # doctest: +SKIP
        >>> run_dir = Trainer(cfg).fit()                                          # doctest: +SKIP
    """

    resume_hint: str | None = None  # the stop line's advice (None: `--resume`); a caller that resumes says its own
    stop_signal: str | None = None  # the name of the signal that stopped the run

    # ---------------------------------------------------------------- one step (hot path)
    def train_step(
        self,
        images: torch.Tensor | list,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
    ) -> dict:
        """One optimisation step on a uint8 batch (or per-view crops); returns the detached loss terms
        (device tensors) and, under ``INPUT_CHECK``, the flag of the criteria's finiteness checks.
        Nothing is read back to the host (``_flush`` reads them at logging steps)."""
        model = model or self.ddp_model
        optimizer = optimizer or self.optimizer
        ctx = self.step_context()
        with deferred_finite_checks() as inputs_finite:  # no host read: one flag, read when logging
            terms = self.forward_loss(images, model, self.addon, ctx)
        check = inputs_finite()
        optimizer.zero_grad(set_to_none=True)
        scaler = self.state.scaler
        scaler.scale(terms["loss"]).backward()
        self.method.after_backward(ctx)
        if self.cfg.train.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        self.method.after_step(ctx)
        if scheduler is not None:
            scheduler.step()
        self.state.run_step += 1
        kept = {INPUT_CHECK: check} if check is not None else {}
        kept.update((k, v.detach()) for k, v in terms.items())
        return kept

    # ---------------------------------------------------------------- the run
    def fit(self):
        """Run warm-up (if heads were built), the epochs and the checkpoints; return the run folder."""
        old = self._install_signals()
        s = self.state
        if s.global_step > 0 and (s.epoch >= self.cfg.train.epochs or self._done()):
            self.log(
                f"nothing to do: the run already ran its {s.global_step} steps ({s.epoch} full epoch"
                f"{'' if s.epoch == 1 else 's'}); raise "
                "train.epochs or train.max_steps (--set) to go on"
            )
        try:
            self.method.before_training(self.step_context(), self._prepare_batches())  # e.g. targets the warm-up needs
            if self.need_warmup and not s.warmup_done:
                self._warmup()
            self.method.prepare(self.step_context(), self._prepare_batches())  # e.g. DINO's missing centre
            if s.global_step == 0 and s.epoch == 0:
                self._epoch_metrics("init")
            if self.guard.best_step is None:  # before the first step (or a checkpoint without a guard)
                self._guard_check()
            while s.epoch < self.cfg.train.epochs and not self._done():
                self._run_epoch()
                if self.stop_requested or self.guard_stopped:
                    break
            if not (self.stop_requested or self.guard_stopped):
                self._guard_last()
                self._stage = "writing the last checkpoint"
                self.save()
        except (MemoryError, RuntimeError) as exc:
            if is_out_of_memory(exc):
                raise self._out_of_memory() from exc
            if self.dist.world_size > 1 and _peer_lost(exc):
                old = {}  # keep the flag-only handlers: torchrun's SIGTERM must not cut this rank's message
                self.dist.owns_group = False  # destroying a group with a dead member can abort (gloo)
                raise self._rank_stopped() from exc
            raise
        finally:
            self._restore_signals(old)
            self._close()
        return self.run_dir

    def _out_of_memory(self) -> OutOfMemory:
        """The one-line error of an allocation failure: where, at which batch size, what to lower."""
        b, cfg = self.per_device_batch, self.cfg
        bf16 = ", or use train.precision=bf16" if cfg.train.precision == "fp32" else ""
        where = getattr(self, "_stage", "the training step")
        return OutOfMemory(
            f"out of memory at batch size {b} (per process) in {where}: lower optim.batch_size "
            f"(--set optim.batch_size={max(b // 2, 1)}) or data.image_size{bf16}, as a new run (another "
            f"--out, or --set out.overwrite=true); {self._intact('no checkpoint of this run was written yet')}"
        )

    def _rank_stopped(self) -> RankStopped:
        """This rank's one line when another process of the run died (torchrun)."""
        kept = self._intact("no checkpoint of this run was written yet (a resume starts it again)")
        return RankStopped(
            f"rank {self.dist.rank}: another process of this run stopped (its connection was lost in a "
            f"collective at step {self.state.global_step + 1}); nothing was written since; {kept}",
            self.run_dir,
            self.run.last_good_step,
        )

    def _intact(self, none: str) -> str:
        good = self.run.last_good
        return none if good is None else f"{good} (step {self.run.last_good_step}) is intact"

    def _done(self) -> bool:
        ms = self.cfg.train.max_steps
        return ms is not None and self.state.global_step >= ms

    def _run_epoch(self) -> None:
        s = self.state
        self.sampler.set_epoch(s.epoch, s.step_in_epoch)
        self.model.train()
        self.method.epoch_start(self.step_context(), s.epoch)
        for images, _ in self.loader:
            self._stage = "the training step"
            try:
                terms = self.train_step(images, scheduler=s.scheduler)
            except TrainingDiverged as exc:  # the guard restores the best checkpoint, or re-raises
                terms = None
                self._guard_diverged(exc)
            s.global_step += 1
            s.step_in_epoch += 1
            if terms is not None:
                self._pending.append(terms)
            if self.bar is not None:
                self.bar.update(1)
            try:
                if s.global_step % self.cfg.train.log_every == 0:
                    self._flush("train")
                if s.global_step % self.cfg.train.guard.interval == 0 and not self.guard_stopped:
                    self._guard_check()
            except TrainingDiverged as exc:
                self._guard_diverged(exc)
            if self.guard_stopped:
                self._stage = "writing a checkpoint"
                self.save()
                return
            save_now, stop = D.any_flags((self.save_requested, self.stop_requested), self.dist)  # 1 per step
            if save_now or stop or self._done():
                self.save_requested = False
                self.stop_requested = stop
                if self._done() and not stop:
                    self._guard_last()
                self._stage = "writing a checkpoint"
                self.save()
                if stop:
                    hint = self.resume_hint or f"resume with --resume (run folder {self.run_dir})"
                    self.log(f"stopped by signal at epoch {s.epoch} step {s.global_step}; {hint}")
                if stop or self._done():
                    return
        try:
            self._flush("train")
        except TrainingDiverged as exc:
            self._guard_diverged(exc)
        s.epoch += 1
        s.step_in_epoch = 0
        self._epoch_metrics("epoch")
        if s.epoch >= self.cfg.train.epochs:
            self._guard_last()
        every = max(1, self.cfg.train.checkpoint_every_epochs)
        if s.epoch % every == 0 or s.epoch == self.cfg.train.epochs:
            self._stage = "writing a checkpoint"
            try:
                self.save(epoch_file=True)
            except TrainingDiverged as exc:  # weights the epoch's last step broke: the guard's, as a NaN loss
                self._guard_diverged(exc)  # re-raised when the guard cannot act
                self.save(epoch_file=True)  # the best checkpoint's state, restored

    def _prepare_batches(self):
        """View lists of training batches in their own data order (for ``Method.prepare``)."""
        self.sampler.set_epoch(10**6 + 1)
        for images, _ in self.loader:
            if isinstance(images, (list, tuple)):
                yield self.views([x.to(self.device, non_blocking=True) for x in images])
            else:
                yield self.views(images.to(self.device, non_blocking=True))

    def _warmup(self) -> None:
        """Train only the heads for ``head_warmup_steps`` (backbone frozen, its BN in eval mode)."""
        steps = self.cfg.train.head_warmup_steps
        self.log(
            f"heads warm-up: {steps} step{'s' if steps != 1 else ''} on {', '.join(self.heads_built)} (backbone frozen)"
        )
        backbone = self.model.backbone
        backbone.requires_grad_(False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = self.make_optimizer(params)
        warm_model = D.wrap_ddp(self.model, self.dist)
        self.sampler.set_epoch(10**6)  # its own data order, independent of the epochs
        done = 0
        while done < steps:
            for images, _ in self.loader:
                self._stage = "the heads warm-up step"
                self.model.train()
                backbone.eval()
                self._pending.append(self.train_step(images, model=warm_model, optimizer=opt))
                done += 1
                if done % self.cfg.train.log_every == 0 or done == steps:
                    self._flush("warmup", step=done)
                if done >= steps or self.stop_requested:
                    break
            if self.sampler.batches_per_epoch == 0 or self.stop_requested:
                break
        backbone.requires_grad_(True)
        self.method.after_warmup(self.step_context())  # e.g. a teacher copied again from the warmed-up heads
        self.model.train()
        self.state.run_step = 0  # a method's hooks count the iterations of the main phase
        self.state.warmup_done = True
        self.ddp_model = D.wrap_ddp(self.model, self.dist)

    def save(self, epoch_file: bool = False) -> None:
        """Write ``checkpoints/last.pt`` (and ``epoch_XXXX.pt``) atomically (``self.run``), after
        finiteness checks.

        Raises:
            TrainingDiverged: the loss, any parameter, buffer, optimiser/scaler/queue value, or
                the eval-mode output on a fixed batch is NaN/Inf; nothing is written (on any rank).
        """
        self._flush("train")  # raises TrainingDiverged before a bad state reaches the disk
        s = self.state
        state = s.checkpoint(self.cfg, self.dist, self.per_device_batch, self.run.metrics_rows)
        state["guard"] = self.guard.state_dict()
        extra = (self.method.state_key,) if self.method.state_key else ()  # the method's own state
        bad = R.nonfinite(state, ("model", "optimizer", "scaler", *extra)) or self._probe_nonfinite()
        if D.any_flag(bad is not None, self.dist):
            detail = "found before writing a checkpoint; nothing was written"
            raise self._diverged(s.global_step, bad or "the state of another rank", detail)
        self.run.write_checkpoint(state, s.global_step, s.epoch if epoch_file else None)

    # ---------------------------------------------------------------- logging and checks
    def log(self, msg: str) -> None:
        """A log line on stderr (rank 0 only)."""
        if self.dist.is_main and not self.quiet:
            bar = getattr(self, "bar", None)  # None until the outputs are built
            if bar is not None:
                bar.write(msg)
            else:
                print(msg, file=sys.stderr, flush=True)

    def _flush(self, phase: str, step: int | None = None) -> None:
        """Read the pending per-step terms (one host sync), check them, write one log row."""
        if not self._pending:
            return
        keys = list(self._pending[0])
        table = torch.stack([torch.stack([t[k].float() for k in keys]) for t in self._pending])
        # local losses are logged as their mean over ranks, the global loss; a NaN
        # on any rank stops every rank
        table = D.mean_over_ranks(table, self.dist).cpu()
        n = table.shape[0]
        epoch, last_step = self.state.epoch, step if step is not None else self.state.global_step
        if not torch.isfinite(table).all():
            bad_row, bad_col = (~torch.isfinite(table)).nonzero()[0].tolist()
            self._pending = []
            term = "model output" if keys[bad_col] == INPUT_CHECK else keys[bad_col]
            raise self._diverged(last_step - n + 1 + bad_row, term, f"value {table[bad_row, bad_col]}")
        if INPUT_CHECK in keys:
            i = keys.index(INPUT_CHECK)
            keys, table = keys[:i] + keys[i + 1 :], torch.cat([table[:, :i], table[:, i + 1 :]], dim=1)
        now = time.perf_counter()
        elapsed = max(now - self._t_last, 1e-9)
        self._t_last = now
        self._pending = []
        means = table.mean(dim=0).tolist()
        row = {
            "epoch": epoch,
            "step": last_step,
            "phase": phase,
            **dict(zip(keys, means)),
            "lr": self.optimizer.param_groups[0]["lr"],
            "img_per_s": n * self.global_batch / elapsed,
        }
        self.run.write_row(row, keys)
        unit = "clips" if getattr(getattr(self.model, "backbone", None), "input_ndim", 4) == 2 else "img"  # audio
        if self.bar is not None:
            self.bar.set_postfix({"loss": f"{row['loss']:.4g}", f"{unit}_s": f"{row['img_per_s']:.0f}"}, refresh=False)
        elif self.dist.is_main:
            left = divmod(round(max(self.total_steps - last_step, 0) * elapsed / n), 60)  # at this window's pace
            eta = f"/{self.total_steps}, ETA {left[0]}:{left[1]:02d}" if phase == "train" else ""
            self.log(
                f"[{phase}] epoch {epoch} step {last_step}{eta} loss {row['loss']:.5g} "
                f"lr {row['lr']:.3g} {row['img_per_s']:.0f} {unit}/s"
            )

    def _epoch_metrics(self, phase: str) -> None:
        if not self.dist.is_main or self.monitor is None:
            self._t_last = time.perf_counter()
            return
        self._stage = f"the label-free metrics of train.probe_size={self.cfg.train.probe_size} images"
        metrics = self.monitor(self.model, self.amp_dtype)
        epoch = self.state.epoch
        self.run.write_row({"epoch": epoch, "step": self.state.global_step, "phase": phase, **metrics})
        self.log(f"[{phase}] epoch {epoch} " + " ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        self._t_last = time.perf_counter()  # metric time does not count against img/s

    def _close(self) -> None:
        """End the run's outputs: the metrics log, the progress bar, TensorBoard, the lock, the process group."""
        try:
            self.run.close()
        finally:
            if self.bar is not None:
                self.bar.close()
            self.ddp_model = self.model  # drop the DDP wrapper before the group goes (see D.teardown)
            D.teardown(self.dist)

    # ---------------------------------------------------------------- signals
    def _install_signals(self) -> dict:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {}

        def stop(signum, frame):  # noqa: ARG001
            self.stop_requested, self.stop_signal = True, signal.Signals(signum).name

        def save(signum, frame):  # noqa: ARG001
            self.save_requested = True

        for sig, fn in ((signal.SIGTERM, stop), (signal.SIGINT, stop), (getattr(signal, "SIGUSR1", None), save)):
            if sig is not None:
                old[sig] = signal.signal(sig, fn)
        return old

    @staticmethod
    def _restore_signals(old: dict) -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)
