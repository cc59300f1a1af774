"""SwAV (Caron et al., NeurIPS 2020): swapped prediction of Sinkhorn codes over multi-crop views."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from e2mc.criteria import build_criterion
from e2mc.methods.base import Method, register


@register
class SwAV(Method):
    name, views, heads = "swav", "swav", ("projector", "prototypes")
    addon_input = "projection before L2 normalisation of the two large crops"

    def build_criterion(self, cfg):
        m = cfg.method
        return build_criterion(
            "swav",
            temperature=m.temperature,
            sinkhorn_epsilon=m.sinkhorn_epsilon,
            sinkhorn_iterations=m.sinkhorn_iterations,
            crops_for_assign=tuple(m.crops_for_assign),
        )

    def base_loss(self, out, criterion, zs, queue, prototypes):
        emb = [F.normalize(z.float(), dim=1) for z in out["z"]] if queue is not None else None
        return criterion(out["scores"], embeddings=emb, prototypes=prototypes, queue=queue)

    @torch.no_grad()
    def before_forward(self, model):
        """L2-normalise the prototype vectors (as official SwAV does every step)."""
        w = model.prototypes.weight
        w.copy_(F.normalize(w.data, dim=1, p=2))

    def after_backward(self, model, run_step, cfg):
        """Drop prototype gradients for the first ``freeze_prototypes_iters`` steps of this run."""
        if run_step < cfg.method.freeze_prototypes_iters:
            for p in model.prototypes.parameters():
                p.grad = None
