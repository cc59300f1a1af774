"""The ``Method`` base class and the registry every method adds itself to."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from e2mc.criteria import build_addon
from e2mc.distributed import shared_gather
from e2mc.errors import CheckpointError, ConfigError

LOSS_TERMS = ("loss", "base", "addon")

METHODS: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: put one instance of ``cls`` in ``METHODS`` under ``cls.name``."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or already registered")
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    """The ``Method`` called ``name``; ``ConfigError`` listing the valid names otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; use one of {sorted(METHODS)}") from None


def _terms(out: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach() for k, v in out.items() if k != "loss"}


class Method:
    """One SSL method. Subclasses set the class attributes and implement ``build_criterion`` and
    ``base_loss``; the hooks around the step default to doing nothing.

    Attributes:
        name: registry key (``method.name`` in the config).
        views: name of the view recipe in ``e2mc.data.views``.
        heads: attributes of ``SSLModel`` the method needs (besides the backbone).
        addon_input: which model output feeds the add-on (documentation string).
    """

    name: ClassVar[str] = ""
    views: ClassVar[str] = ""
    heads: ClassVar[tuple[str, ...]] = ()
    addon_input: ClassVar[str] = ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, views={self.views!r}, heads={self.heads})"

    # -- what each method defines ------------------------------------------------------------
    def build_criterion(self, cfg: Any) -> nn.Module:
        """Base criterion from ``cfg.method`` (a ``RunConfig``)."""
        raise NotImplementedError

    def base_loss(
        self,
        out: dict,
        criterion: nn.Module,
        zs: list[torch.Tensor],
        queue: nn.Module | None,
        prototypes: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """The criterion's output dict (``"loss"`` + terms) for the model output ``out``; ``zs`` are
        the two views' embeddings that also feed the add-on."""
        raise NotImplementedError

    @torch.no_grad()
    def before_forward(self, model: nn.Module) -> None:
        """Called before every forward (SwAV normalises its prototypes)."""

    def after_backward(self, model: nn.Module, run_step: int, cfg: Any) -> None:
        """Called after every backward, before the optimiser step (SwAV freezes its prototypes)."""

    # -- shared ------------------------------------------------------------------------------
    def build_addon(self, cfg: Any, cov_weight: float | None = None) -> nn.Module:
        """Add-on from ``cfg.addon``; E2MC gets its (defaulted) typed fields, others ``kwargs``.
        ``cov_weight``: the measured value when ``addon.cov_weight`` is ``"auto"`` (``train.calibrate``)."""
        a = cfg.addon
        kwargs = dict(a.kwargs)
        if a.name == "e2mc":
            cw = cov_weight if a.cov_weight == "auto" else a.cov_weight
            if cw == "auto":
                raise ConfigError("addon.cov_weight=auto is measured by the trainer; pass the measured value")
            kwargs.update(transform=a.transform, entropy_weight=a.entropy_weight, cov_weight=cw, m=a.m, eps=a.eps)
        return build_addon(a.name, **kwargs)

    def check_model(self, model: nn.Module) -> None:
        """Raise ``CheckpointError`` when ``model`` lacks a head this method needs."""
        missing = [h for h in self.heads if getattr(model, h, None) is None]
        if missing:
            raise CheckpointError(
                f"the model has no {', '.join(missing)} but method {self.name!r} needs them; "
                f"pick the method the checkpoint was trained with (--method) or start from a "
                "backbone-only checkpoint so that fresh heads are built and warmed up"
            )

    def compute_loss(
        self,
        out: dict,
        criterion: nn.Module,
        addon: nn.Module,
        queue: nn.Module | None = None,
        prototypes: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss terms from the model output ``out`` (``SSLModel.forward``'s dict).

        Returns ``{"loss": base + addon (differentiable), "base", "addon", "base.<term>",
        "addon.<term>"}``; all but ``"loss"`` are detached. Criteria run in float32 themselves.
        The add-on always sees ``out["z"][:2]`` (``addon_input``). Under ``torchrun`` the views
        ``z`` are gathered once and shared by the base criterion and the add-on
        (``e2mc.distributed.shared_gather``); the per-rank batches must have equal sizes (the
        trainer's sampler drops incomplete global batches).
        """
        zs = out["z"][:2]
        with shared_gather(zs):  # the base loss and the add-on share one gather of z (when they gather)
            base = self.base_loss(out, criterion, zs, queue, prototypes)
            extra = addon(zs)
        total = base["loss"] + extra["loss"]
        terms = {"loss": total, "base": base["loss"].detach(), "addon": extra["loss"].detach()}
        terms.update(_terms(base, "base"))
        terms.update(_terms(extra, "addon"))
        return terms
