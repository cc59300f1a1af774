"""SimSiam (Chen & He, CVPR 2021): negative cosine between one view's prediction and the other's projection."""

from __future__ import annotations

from e2mc.criteria import build_criterion
from e2mc.methods.base import Method, register


@register
class SimSiam(Method):
    name, views, heads = "simsiam", "simsiam", ("projector", "predictor")
    addon_input = "projector output z (not the predictor's)"

    def build_criterion(self, cfg):
        return build_criterion("simsiam")

    def base_loss(self, out, criterion, zs, queue, prototypes):
        return criterion(zs, out["p"][:2])
