"""Projection heads with the exact module layout (key names and shapes) of the published code.

=================  ===========================================================  ==================
head               layout                                                        state-dict keys
=================  ===========================================================  ==================
VICReg expander    [Linear, BN1d, ReLU] x (len(sizes)-1), Linear(bias=False)     0.* 1.* 3.* 4.* 6.w
SwAV head          Linear, BN1d, ReLU, Linear  (hidden=0: a single Linear)        0.* 1.* 3.*
SwAV prototypes    Linear(out, K, bias=False)                                     weight
SimSiam projector  Linear(nb), BN, ReLU, Linear(nb), BN, ReLU, Linear, BN(no aff)  0.w 1.* 3.w 4.* 6.* 7.*
SimSiam predictor  Linear(nb), BN1d, ReLU, Linear                                 0.w 1.* 3.*
=================  ===========================================================  ==================

Default sizes (:func:`default_head_sizes`), chosen so that ResNet-50 (2048-d) gets the published
heads and smaller backbones get heads scaled with their width ``d``:

* vicreg:  ``projector = (min(8192, 4d),) * 3``            (ResNet-50: 8192-8192-8192)
* swav:    ``hidden = d``, ``out = min(128, d)``, ``prototypes = 3000 if d >= 2048 else 1000``
* simsiam: ``proj_hidden = d``, ``proj_dim = min(2048, 4d)``, ``pred_hidden = proj_dim // 4``
"""

from __future__ import annotations

from torch import nn

from e2mc.errors import ConfigError

HEAD_NAMES = ("projector", "predictor", "prototypes")
METHOD_HEADS = {
    "vicreg": ("projector",),
    "swav": ("projector", "prototypes"),
    "simsiam": ("projector", "predictor"),
}


def vicreg_projector(in_dim: int = 2048, sizes=(8192, 8192, 8192)) -> nn.Sequential:
    """VICReg expander: (Linear, BN1d, ReLU) per hidden size, then Linear without bias.

    Example:
        >>> [k for k in vicreg_projector(8, (16, 16, 4)).state_dict() if k.endswith("weight")]
        ['0.weight', '1.weight', '3.weight', '4.weight', '6.weight']
    """
    sizes = [int(in_dim)] + [int(s) for s in sizes]
    if len(sizes) < 2:
        raise ConfigError("vicreg_projector needs at least one output size")
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
    return nn.Sequential(*layers)


def swav_head(in_dim: int = 2048, hidden: int = 2048, out: int = 128) -> nn.Module:
    """SwAV projection head: Linear, BN1d, ReLU, Linear (``hidden=0``: a single Linear)."""
    if hidden == 0:
        return nn.Sequential(nn.Linear(in_dim, out))
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out)
    )


def swav_prototypes(out: int = 128, n_prototypes: int = 3000) -> nn.Linear:
    """SwAV prototypes: ``nn.Linear(out, K, bias=False)``; its weight is the (K, out) matrix."""
    return nn.Linear(out, n_prototypes, bias=False)


def simsiam_projector(in_dim: int = 2048, hidden: int = 2048, out: int = 2048) -> nn.Sequential:
    """SimSiam projector (``encoder.fc`` in the official checkpoint); the last BN has no affine."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, out),
        nn.BatchNorm1d(out, affine=False),
    )


def simsiam_predictor(dim: int = 2048, hidden: int = 512) -> nn.Sequential:
    """SimSiam predictor: Linear(no bias), BN1d, ReLU, Linear."""
    return nn.Sequential(
        nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim)
    )


def default_head_sizes(method: str, in_dim: int) -> dict:
    """Default head sizes of ``method`` for a backbone with ``in_dim`` features (see module doc)."""
    d = int(in_dim)
    if method == "vicreg":
        return {"projector": [min(8192, 4 * d)] * 3}
    if method == "swav":
        return {"hidden": d, "out": min(128, d), "prototypes": 3000 if d >= 2048 else 1000}
    if method == "simsiam":
        proj = min(2048, 4 * d)
        return {"proj_hidden": d, "proj_dim": proj, "pred_hidden": max(1, proj // 4)}
    raise ConfigError(f"unknown method {method!r}; use one of {', '.join(METHOD_HEADS)}")


def resolve_head_sizes(method: str, in_dim: int, **sizes) -> dict:
    """Defaults of ``method`` updated with ``sizes``; unknown size names raise ConfigError."""
    out = default_head_sizes(method, in_dim)
    unknown = set(sizes) - set(out)
    if unknown:
        raise ConfigError(
            f"unknown head size(s) {sorted(unknown)} for {method}; known: {sorted(out)}. Give "
            f"{method}'s names in model.head_sizes, or `--set model.head_sizes={{}}` for its defaults"
        )
    out.update({k: (list(v) if isinstance(v, (list, tuple)) else int(v)) for k, v in sizes.items()})
    if method == "simsiam" and "pred_hidden" not in sizes:
        out["pred_hidden"] = max(1, out["proj_dim"] // 4)
    return out


def build_heads(method: str | None, in_dim: int, **sizes) -> dict:
    """Heads of ``method`` for a backbone with ``in_dim`` features.

    Returns ``dict(projector=..., predictor=..., prototypes=...)`` (``None`` where the method
    has no such head). ``method=None`` gives no heads. Sizes: see :func:`default_head_sizes`.

    Example:
        >>> h = build_heads("swav", 512)
        >>> h["prototypes"].weight.shape
        torch.Size([1000, 128])
    """
    heads = dict.fromkeys(HEAD_NAMES)
    if method is None:
        return heads
    s = resolve_head_sizes(method, in_dim, **sizes)
    if method == "vicreg":
        heads["projector"] = vicreg_projector(in_dim, s["projector"])
    elif method == "swav":
        heads["projector"] = swav_head(in_dim, s["hidden"], s["out"])
        heads["prototypes"] = swav_prototypes(s["out"], s["prototypes"])
    else:
        heads["projector"] = simsiam_projector(in_dim, s["proj_hidden"], s["proj_dim"])
        heads["predictor"] = simsiam_predictor(s["proj_dim"], s["pred_hidden"])
    return heads
