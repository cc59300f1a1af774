"""Fixtures for tests/models: checkpoints with the published key names and shapes.

Key names and shapes are written out by hand from the published layouts (the official
repositories' code, summarised in the table of ``e2mc.models.adapters`` and in each method file's
docstring), not with e2mc's own head builders, so the tests check e2mc against the layouts, not against itself.
"""

import pytest
import torch


def rand_like_sd(shapes: dict, seed: int = 0) -> dict:
    """Random tensors for a {key: shape} map (BN counters as int64), so equality tests mean something."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(int(torch.randint(1, 1000, (1,), generator=g)))
        elif k.endswith("running_var"):
            out[k] = torch.rand(shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(shape, generator=g)
    return out


def bn(prefix: str, n: int) -> dict:
    return {f"{prefix}.{s}": (n,) for s in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()
    }


def bn_noaffine(prefix: str, n: int) -> dict:
    return {f"{prefix}.running_mean": (n,), f"{prefix}.running_var": (n,), f"{prefix}.num_batches_tracked": ()}


def trunk_shapes(arch: str) -> dict:
    """torchvision names and shapes of a ResNet trunk without fc (torchvision on the meta device)."""
    import torchvision

    with torch.device("meta"):
        net = torchvision.models.get_model(arch)
    return {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.startswith("fc.")}


def vicreg_projector_shapes(d: int, sizes) -> dict:
    """VICReg expander: Linear/BN/ReLU x2 then Linear(bias=False): keys 0, 1, 3, 4, 6."""
    s1, s2, s3 = sizes
    return (
        {"0.weight": (s1, d), "0.bias": (s1,)}
        | bn("1", s1)
        | {"3.weight": (s2, s1), "3.bias": (s2,)}
        | bn("4", s2)
        | {"6.weight": (s3, s2)}
    )


def swav_shapes(d=2048, hidden=2048, out=128, k=3000) -> dict:
    return (
        {"projection_head.0.weight": (hidden, d), "projection_head.0.bias": (hidden,)}
        | bn("projection_head.1", hidden)
        | {"projection_head.3.weight": (out, hidden), "projection_head.3.bias": (out,), "prototypes.weight": (k, out)}
    )


def simsiam_head_shapes(d=2048, dim=2048, pred=512) -> tuple[dict, dict]:
    proj = (
        {"0.weight": (d, d)}
        | bn("1", d)
        | {"3.weight": (d, d)}
        | bn("4", d)
        | {"6.weight": (dim, d), "6.bias": (dim,)}
        | bn_noaffine("7", dim)
    )
    predictor = {"0.weight": (pred, dim)} | bn("1", pred) | {"3.weight": (dim, pred), "3.bias": (dim,)}
    return proj, predictor


@pytest.fixture(scope="session")
def r50_trunk():
    """A random ResNet-50 trunk state dict in torchvision naming, no fc (VICReg resnet50.pth)."""
    return rand_like_sd(trunk_shapes("resnet50"), seed=1)


@pytest.fixture(scope="session")
def r18_trunk():
    return rand_like_sd(trunk_shapes("resnet18"), seed=2)
