"""VICReg (Bardes, Ponce & LeCun, ICLR 2022): invariance, variance and covariance of the expander output."""

from __future__ import annotations

from e2mc.criteria import build_criterion
from e2mc.methods.base import Method, register


@register
class VICReg(Method):
    name, views, heads = "vicreg", "vicreg", ("projector",)
    addon_input = "expander output z of the two views"

    def build_criterion(self, cfg):
        m = cfg.method
        return build_criterion("vicreg", sim_weight=m.sim_weight, var_weight=m.var_weight, cov_weight=m.cov_weight)

    def base_loss(self, out, criterion, zs, queue, prototypes):
        return criterion(zs)
