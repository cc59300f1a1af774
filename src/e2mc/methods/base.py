"""The ``Method`` base class and the registry every method adds itself to.

A method file (``methods/<name>.py``) declares everything about its method as class attributes
and a few methods (see docs/architecture.md, "Adding a method"); ``@register`` puts it in
``METHODS``, and the generic code (config, model, views, trainer, run state, commands) reads only
this registry. This module imports no torch at import time (the config and the CLI's choices read
the registry, and ``e2mc --help`` stays fast); torch and the criteria are imported where used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from e2mc.errors import CheckpointError, ConfigError

LOSS_TERMS = ("loss", "base", "addon")

METHODS: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: put one instance of ``cls`` in ``METHODS`` under ``cls.name``."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or already registered")
    METHODS[cls.name] = cls()
    return cls


def head_names() -> tuple[str, ...]:
    """Every head slot a registered method declares (its trainable heads, then its momentum teachers), in registry order (``SSLModel`` attributes,
    state-dict prefixes ``<head>.*``): ``e2mc.models.heads.HEAD_NAMES`` and the flat ``"model"``
    naming of ``e2mc.methods.layout``."""
    return tuple(dict.fromkeys(h for m in METHODS.values() for h in (*m.heads, *m.teacher)))


def get_method(name: str) -> Method:
    """The ``Method`` called ``name``; ``ConfigError`` listing the valid names otherwise."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown method {name!r}; use one of {sorted(METHODS)}") from None


@dataclass(frozen=True)
class Option:
    """A method-specific config option (``method.<key>``): its default and, for numbers, the
    allowed range (finite, ``>= lo``, or ``> lo`` when ``lo_open``, and ``<= hi``; ``config.RANGES``
    checks it), for strings the allowed ``choices`` (checked by the config when set and validated)."""

    default: Any
    lo: float = -math.inf
    lo_open: bool = False
    help: str = ""
    hi: float = math.inf
    choices: tuple = ()


@dataclass
class StepContext:
    """What a method's loss and hooks may read about the step: the (unwrapped) model, the method's
    own state (``Method.build_state``), the step counter of this run's main phase, the run config
    and the number of steps of the main phase."""

    model: Any = None
    state: Any = None
    run_step: int = 0
    cfg: Any = None
    total_steps: int = 0  # the steps of this run's main phase (momentum schedules); 0: unknown


def teacher_copy(model: Any, sources: tuple[str, ...]) -> Any:
    """A frozen deep copy of ``model``'s modules ``sources`` as an ``nn.ModuleDict`` (names kept)."""
    import copy

    from torch import nn

    missing = [s for s in sources if getattr(model, s, None) is None]
    if missing:
        raise ConfigError(f"the momentum teacher copies {missing}, which the model does not have")
    teacher = nn.ModuleDict({s: copy.deepcopy(getattr(model, s)) for s in sources})
    teacher.requires_grad_(False)
    return teacher


def copy_into(teacher: Any, model: Any, sources: tuple[str, ...]) -> None:
    """Copy the online modules' parameters and buffers into ``teacher`` (same layout)."""
    import torch

    with torch.no_grad():
        for s in sources:
            online = getattr(model, s).state_dict()
            for k, t in teacher[s].state_dict().items():
                t.copy_(online[k])


def _terms(out: dict, prefix: str) -> dict:
    return {f"{prefix}.{k}": v.detach() for k, v in out.items() if k != "loss"}


class Method:
    """One SSL method: its declarations (class attributes) and behaviour (methods).

    Attributes:
        name: registry key (``method.name`` in the config).
        heads: ``SSLModel`` submodules the method needs besides the backbone, in forward order;
            their state-dict prefixes (``<head>.*``).
        outputs: keys ``forward_heads`` adds to the model output (per-view lists), e.g. ``("z", "p")``.
        addon_input: which model output feeds the add-on (documentation string).
        view_recipe: its augmentation recipe as ``e2mc.data.views.ViewConfig`` fields; the keys
            ``small_images`` (fields replaced for images of at most 64 px) and ``n_small`` (multi-crop
            views at the small crop size) are read by ``view_config``.
        e2mc_defaults: E2MC add-on ``(entropy_weight, cov_weight, transform)`` from the paper's code.
        paper_eps: ``addon.eps`` of the paper's code for this method.
        options: method-specific config options (``method.<key>``), with defaults and ranges.
        state_key: checkpoint key of the method's own state (``build_state``), or ``None``.
        adapters: the adapters (``e2mc.methods.adapter.Adapter`` instances) of its official files;
            ``e2mc.models.adapters.ADAPTERS`` adds them to the generic ones. Their names are
            ``layouts``; a naming of their own (``Adapter.kind``) joins the flat kinds.
        releases: its published files (``e2mc.methods.release.Release`` rows of
            ``e2mc.models.zoo.ZOO``), copied from the README named by ``releases_source``.
        timm_options: ``{fnmatch pattern of a timm model name: constructor options}`` that
            ``e2mc.models.backbones`` applies to those names (DINOv2's ViTs: the official
            position-embedding resampling, ``pos_offset`` / ``pos_antialias``).
        teacher: momentum teachers ``{slot: (online module names)}``: ``SSLModel`` slot ``slot`` is a
            frozen copy (``requires_grad=False``, an ``nn.ModuleDict`` of those modules) of the
            online ``backbone``/heads, saved with the model (``<slot>.<module>.*``), never given to
            the optimiser; the method moves it (``e2mc.methods.momentum.ema_update``) in a hook.
            A file without it gets a copy of the online modules after loading
            (``init_teacher``), and again after a heads warm-up (``after_warmup``).
        concat_views: False: every view goes through the backbone and heads alone (BatchNorm
            statistics per view, as the official code of MoCo v3 and BYOL); True: views of one
            shape are one batch (multi-crop code).
    """

    name: ClassVar[str] = ""
    heads: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()
    addon_input: ClassVar[str] = ""
    view_recipe: ClassVar[dict] = {}
    e2mc_defaults: ClassVar[tuple[float, float, str]] = (10.0, 1.0, "sigmoid")
    paper_eps: ClassVar[float] = 1e-7
    options: ClassVar[dict[str, Option]] = {}
    state_key: ClassVar[str | None] = None
    adapters: ClassVar[tuple] = ()
    releases: ClassVar[tuple] = ()
    releases_source: ClassVar[str] = ""
    timm_options: ClassVar[dict[str, dict]] = {}
    teacher: ClassVar[dict[str, tuple[str, ...]]] = {}
    concat_views: ClassVar[bool] = True

    @property
    def layouts(self) -> tuple[str, ...]:
        """Names of its adapters: ``export --to <layout>`` targets, the layouts that hold its heads."""
        return tuple(a.name for a in self.adapters)

    @property
    def views(self) -> str:
        """Name of its view recipe (its own name)."""
        return self.name

    def view_fields(self, cfg: Any) -> dict:
        """Its view recipe's fields for the run ``cfg`` (default: ``view_recipe``; an option may
        change them, e.g. DINO's ``local_crops_number``)."""
        return dict(self.view_recipe)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, heads={self.heads})"

    # -- heads ------------------------------------------------------------------------------
    def default_head_sizes(self, in_dim: int) -> dict:
        """Default head sizes for a backbone with ``in_dim`` features."""
        raise NotImplementedError

    def derived_head_sizes(self, sizes: dict, given: dict) -> dict:
        """Sizes that follow from others unless ``given`` sets them (default: none)."""
        return sizes

    def build_heads(self, in_dim: int, sizes: dict) -> dict:
        """``{head name: nn.Module}`` for resolved ``sizes``."""
        raise NotImplementedError

    def head_sizes_from_weights(self, heads: dict) -> dict:
        """Head sizes read back from head state dicts ``{head: {key: tensor}}`` (those it can tell)."""
        return {}

    def source_heads(self, arch: str) -> Any:
        """The heads that a library or hub source holds next to its backbone (``arch``, e.g.
        ``hf:<folder>``: a transformers pre-training folder's quantiser), read when a model is
        built from such a name: a ``methods.adapter.Parts`` with ``heads`` (state dicts),
        ``head_sizes``, ``notes`` and ``layout["format"]`` (the ``ADAPTERS`` layout that writes
        the source back: the load report's format); raises ``CheckpointError`` when the source
        cannot feed the method. Default: None (heads built fresh)."""
        return None

    def forward_heads(self, model: Any, features: Any, sizes: list[int], images: Any) -> dict:
        """The heads' outputs ``{output key: list of per-view tensors}`` for one batch of backbone
        ``features`` holding views of ``sizes`` rows each (``tensor.split(sizes)``); ``images``: that
        batch's input (what a momentum teacher sees). The order of
        the operations sets autograd's order of summing gradients: keep it, or resumed runs are
        no longer bit-identical (tests/train/test_resume_fixtures.py)."""
        raise NotImplementedError

    # -- loss and state ----------------------------------------------------------------------
    def build_criterion(self, cfg: Any) -> Any:
        """Base criterion from ``cfg.method`` (a ``RunConfig``)."""
        raise NotImplementedError

    def base_loss(self, out: dict, criterion: Any, zs: list, ctx: StepContext) -> dict:
        """The criterion's output dict (``"loss"`` + terms) for the model output ``out``; ``zs`` are
        the two views' embeddings that also feed the add-on."""
        raise NotImplementedError

    def build_state(self, cfg: Any, model: Any, world_size: int, global_batch: int, log: Callable) -> Any:
        """The method's own training state (an ``nn.Module`` moved to the device by the trainer), or None."""
        return None

    def save_state(self, state: Any, per_device_batch: int) -> Any:
        """The checkpoint value of ``state`` as one process would hold it (a collective under torchrun)."""
        return None

    def load_state(self, state: Any, saved: Any, per_device_batch: int, log: Callable) -> None:
        """Restore ``state`` from its checkpoint value ``saved`` (this rank's share)."""

    def init_state(self, state: Any, report: Any, cfg: Any, log: Callable) -> None:
        """A new run's ``state`` from the file it starts from: ``report`` is its ``LoadReport``
        (``report.method_state``: the state the adapter read from the file, e.g. DINO's centre), or
        None for a random init. Default: nothing."""

    def before_training(self, ctx: StepContext, batches: Any) -> None:
        """Once as a run's training starts (before a heads warm-up, whose steps may need what it makes;
        also on a resume, where the restored state usually makes it a no-op): ``batches`` as
        ``prepare``'s, e.g. to fit targets from the data (HuBERT's k-means). Default: nothing."""

    def prepare(self, ctx: StepContext, batches: Any) -> None:
        """Once before the first step of a run's main phase (after a heads warm-up; also on a
        resume before any step): ``batches`` iterates the view lists of training batches (its own
        data order), e.g. to estimate a statistic the file lacks. Default: nothing."""

    # -- hooks (default: nothing) ---------------------------------------------------------------
    def before_forward(self, ctx: StepContext) -> None:
        """Before every forward."""

    def after_backward(self, ctx: StepContext) -> None:
        """After every backward, before the optimiser step."""

    def after_step(self, ctx: StepContext) -> None:
        """After every optimiser step."""

    def epoch_start(self, ctx: StepContext, epoch: int) -> None:
        """At the start of every epoch of the main phase."""

    def describe(self, cfg: Any) -> str | None:
        """One line on the method's own settings that shape this run (the start summary), or None.
        Default: a momentum teacher's schedule (``methods.momentum``'s options)."""
        if not self.teacher or "momentum" not in self.options:
            return None
        m, cont = cfg.method, getattr(cfg, "mode", "pretrain") == "continue"
        start = m.continue_momentum if cont else m.momentum
        if m.momentum_schedule == "constant" or start == m.momentum_end:
            text = f"teacher momentum {start:g}, constant"
            if cont and start >= 1.0:
                text += (
                    " (the teacher stays where it starts: the file's, or, for a file without one, a copy of the"
                    " online network after any heads warm-up; set method.continue_momentum, e.g. 0.996, to move it)"
                )
            return text
        return f"teacher momentum {start:g} -> {m.momentum_end:g} (cosine over the run)"

    def after_warmup(self, ctx: StepContext) -> None:
        """After the heads warm-up (fresh heads trained with the backbone frozen): a teacher is
        copied again from the warmed-up online modules."""
        self.init_teacher(ctx.model)

    # -- momentum teachers -------------------------------------------------------------------
    def init_teacher(self, model: Any, slots: Any = None) -> list[str]:
        """Make each teacher slot (``teacher``; or those in ``slots``) of ``model`` a frozen copy of
        its online modules; returns the slots set. Called by ``SSLModel`` for a slot it was not
        given, and by the loader for a file without the teacher's weights."""
        done = []
        for slot, sources in self.teacher.items():
            if slots is not None and slot not in slots:
                continue
            if getattr(model, slot, None) is None:
                setattr(model, slot, teacher_copy(model, sources))
            else:
                copy_into(getattr(model, slot), model, sources)
            done.append(slot)
        return done

    # -- shared ------------------------------------------------------------------------------
    def resolve_head_sizes(self, in_dim: int, **sizes) -> dict:
        """Defaults updated with ``sizes``; unknown size names raise ConfigError."""
        out = self.default_head_sizes(in_dim)
        unknown = set(sizes) - set(out)
        if unknown:
            raise ConfigError(
                f"unknown head size(s) {sorted(unknown)} for {self.name}; known: {sorted(out)}. Give "
                f"{self.name}'s names in model.head_sizes, or `--set model.head_sizes={{}}` for its defaults"
            )
        out.update({k: (list(v) if isinstance(v, (list, tuple)) else int(v)) for k, v in sizes.items()})
        return self.derived_head_sizes(out, sizes)

    def build_addon(self, cfg: Any, cov_weight: float | None = None) -> Any:
        """Add-on from ``cfg.addon``; E2MC gets its (defaulted) typed fields, others ``kwargs``.
        ``cov_weight``: the measured value when ``addon.cov_weight`` is ``"auto"`` (``train.calibrate``)."""
        from e2mc.criteria import build_addon

        a = cfg.addon
        kwargs = dict(a.kwargs)
        if a.name == "e2mc":
            cw = cov_weight if a.cov_weight == "auto" else a.cov_weight
            if cw == "auto":
                raise ConfigError("addon.cov_weight=auto is measured by the trainer; pass the measured value")
            kwargs.update(transform=a.transform, entropy_weight=a.entropy_weight, cov_weight=cw, m=a.m, eps=a.eps)
        return build_addon(a.name, **kwargs)

    def check_model(self, model: Any) -> None:
        """Raise ``CheckpointError`` when ``model`` lacks a head this method needs."""
        missing = [h for h in self.heads if getattr(model, h, None) is None]
        if missing:
            raise CheckpointError(
                f"the model has no {', '.join(missing)} but method {self.name!r} needs them; "
                f"pick the method the checkpoint was trained with (--method) or start from a "
                "backbone-only checkpoint so that fresh heads are built and warmed up"
            )

    def compute_loss(self, out: dict, criterion: Any, addon: Any, ctx: StepContext | None = None) -> dict:
        """Loss terms from the model output ``out`` (``SSLModel.forward``'s dict).

        Returns ``{"loss": base + addon (differentiable), "base", "addon", "base.<term>",
        "addon.<term>"}``; all but ``"loss"`` are detached. Criteria run in float32 themselves.
        The add-on always sees ``out["z"][:2]`` (``addon_input``). Under ``torchrun`` the views
        ``z`` are gathered once and shared by the base criterion and the add-on
        (``e2mc.distributed.shared_gather``); the per-rank batches must have equal sizes (the
        trainer's sampler drops incomplete global batches). ``ctx``: the step's model, method
        state and counters (``None``: no model, no state, as the calibration's measurement).
        """
        from e2mc.distributed import shared_gather

        zs = out["z"][:2]
        with shared_gather(zs):  # the base loss and the add-on share one gather of z (when they gather)
            base = self.base_loss(out, criterion, zs, ctx or StepContext())
            extra = addon(zs)
        total = base["loss"] + extra["loss"]
        terms = {"loss": total, "base": base["loss"].detach(), "addon": extra["loss"].detach()}
        terms.update(_terms(base, "base"))
        terms.update(_terms(extra, "addon"))
        return terms
