"""SSL methods: which heads and views each needs, which tensors feed the base loss and the add-on.

One registry, ``METHODS``, maps a name to a small ``Method`` object. The training loop asks the
method for its criterion, calls ``compute_loss`` on the model output, and lets the method touch
the model around the step (SwAV normalises its prototypes before the forward and freezes them
for the first iterations of *this* run).

Example:
    >>> from e2mc.config import load_config
    >>> cfg = load_config(None, ["method.name=vicreg"])
    >>> m = METHODS["vicreg"]
    >>> crit = m.build_criterion(cfg)
    >>> m.heads
    ('projector',)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from e2mc.errors import CheckpointError, ConfigError

LOSS_TERMS = ("loss", "base", "addon")


def _terms(out: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach() for k, v in out.items() if k != "loss"}


@dataclass(frozen=True)
class Method:
    """Spec of one SSL method.

    Attributes:
        name: registry key.
        views: name of the view recipe in ``e2mc.data.views``.
        heads: attributes of ``SSLModel`` the method needs (besides the backbone).
        addon_input: which model output feeds the add-on (documentation string).
    """

    name: str
    views: str
    heads: tuple[str, ...]
    addon_input: str

    def build_criterion(self, cfg: Any) -> nn.Module:
        """Base criterion from ``cfg.method`` (a ``RunConfig``)."""
        from e2mc.criteria import build_criterion

        m = cfg.method
        if self.name == "vicreg":
            return build_criterion("vicreg", sim_weight=m.sim_weight, var_weight=m.var_weight,
                                   cov_weight=m.cov_weight)
        if self.name == "swav":
            return build_criterion("swav", temperature=m.temperature, sinkhorn_epsilon=m.sinkhorn_epsilon,
                                   sinkhorn_iterations=m.sinkhorn_iterations,
                                   crops_for_assign=tuple(m.crops_for_assign))
        return build_criterion("simsiam")

    def build_addon(self, cfg: Any, cov_weight: float | None = None) -> nn.Module:
        """Add-on from ``cfg.addon``; E2MC gets its (defaulted) typed fields, others ``kwargs``.
        ``cov_weight``: the measured value when ``addon.cov_weight`` is ``"auto"`` (``train.calibrate``)."""
        from e2mc.criteria import build_addon

        a = cfg.addon
        kwargs = dict(a.kwargs)
        if a.name == "e2mc":
            cw = cov_weight if a.cov_weight == "auto" else a.cov_weight
            if cw == "auto":
                raise ConfigError("addon.cov_weight=auto is measured by the trainer; pass the measured value")
            kwargs.update(transform=a.transform, entropy_weight=a.entropy_weight, cov_weight=cw, m=a.m,
                          eps=a.eps)
        return build_addon(a.name, **kwargs)

    def check_model(self, model: nn.Module) -> None:
        """Raise ``CheckpointError`` when ``model`` lacks a head this method needs."""
        missing = [h for h in self.heads if getattr(model, h, None) is None]
        if missing:
            raise CheckpointError(
                f"the model has no {', '.join(missing)} but method {self.name!r} needs them; "
                f"pick the method the checkpoint was trained with (--method) or start from a "
                "backbone-only checkpoint so that fresh heads are built and warmed up")

    @torch.no_grad()
    def before_forward(self, model: nn.Module) -> None:
        """SwAV: L2-normalise the prototype vectors (as official SwAV does every step)."""
        if self.name == "swav":
            w = model.prototypes.weight
            w.copy_(F.normalize(w.data, dim=1, p=2))

    def after_backward(self, model: nn.Module, run_step: int, cfg: Any) -> None:
        """SwAV: drop prototype gradients for the first ``freeze_prototypes_iters`` steps of this run."""
        if self.name == "swav" and run_step < cfg.method.freeze_prototypes_iters:
            for p in model.prototypes.parameters():
                p.grad = None

    def compute_loss(self, out: dict, criterion: nn.Module, addon: nn.Module,
                     queue: nn.Module | None = None, prototypes: torch.Tensor | None = None
                     ) -> dict[str, torch.Tensor]:
        """Loss terms from the model output ``out`` (``SSLModel.forward``'s dict).

        Returns ``{"loss": base + addon (differentiable), "base", "addon", "base.<term>",
        "addon.<term>"}``; all but ``"loss"`` are detached. Criteria run in float32 themselves.
        Under ``torchrun`` the views ``z`` are gathered once and shared by the base criterion and
        the add-on (``e2mc.distributed.shared_gather``); the per-rank batches must have equal
        sizes (the trainer's sampler drops incomplete global batches).
        """
        from e2mc.distributed import shared_gather

        zs = out["z"][:2]
        with shared_gather(zs):  # the base loss and the add-on share one gather of z (when they gather)
            if self.name == "vicreg":
                base = criterion(zs)
            elif self.name == "swav":
                emb = [F.normalize(z.float(), dim=1) for z in out["z"]] if queue is not None else None
                base = criterion(out["scores"], embeddings=emb, prototypes=prototypes, queue=queue)
            else:
                base = criterion(zs, out["p"][:2])
            # VICReg: the expander output; SwAV: the 128-d projection before L2 normalisation of
            # the large crops; SimSiam: the projector output, not the predictor's
            extra = addon(zs)
        total = base["loss"] + extra["loss"]
        terms = {"loss": total, "base": base["loss"].detach(), "addon": extra["loss"].detach()}
        terms.update(_terms(base, "base"))
        terms.update(_terms(extra, "addon"))
        return terms


METHODS: dict[str, Method] = {
    "vicreg": Method("vicreg", "vicreg", ("projector",), "expander output z of the two views"),
    "swav": Method("swav", "swav", ("projector", "prototypes"),
                   "projection before L2 normalisation of the two large crops"),
    "simsiam": Method("simsiam", "simsiam", ("projector", "predictor"), "projector output z"),
}


def get_method(name: str) -> Method:
    """The ``Method`` called ``name``; ``ConfigError`` listing the valid names otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; use one of {sorted(METHODS)}") from None
