"""On-device augmentation views and the evaluation transform (e2mc.data.views)."""

import pytest
import torch

from e2mc.data.datasets import DatasetInfo
from e2mc.data.views import ViewConfig, ViewGenerator, crop_sizes, eval_transform, view_config
from e2mc.errors import ConfigError, DataError

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _batch(n=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize(
    "recipe,shapes",
    [
        ("vicreg", [(6, 3, 32, 32)] * 2),
        ("simsiam", [(6, 3, 32, 32)] * 2),
        ("swav", [(6, 3, 32, 32)] * 2 + [(6, 3, 16, 16)] * 6),
    ],
)
def test_view_shapes_per_recipe(recipe, shapes):
    views = ViewGenerator(recipe, 32, MEAN, STD)(_batch())
    assert [tuple(v.shape) for v in views] == shapes
    assert all(v.dtype == torch.float32 for v in views)


def test_crop_size_rule_and_recipe_params():
    assert crop_sizes(32) == (32, 16) and crop_sizes(256) == (224, 96) and crop_sizes(64) == (64, 24)
    big = view_config("vicreg", 256)
    assert big.large_size == 224 and big.per_view(big.blur_p, "blur") == [1.0, 0.1]
    assert big.per_view(big.solarize_p, "s") == [0.0, 0.2] and big.large_scale == (0.08, 1.0)
    small = view_config("vicreg", 32)
    assert small.per_view(small.blur_p, "blur") == [0.0, 0.0]  # blur off at <= 64 px
    sw = view_config("swav", 224)
    assert (sw.n_large, sw.n_small, sw.small_size, sw.small_scale) == (2, 6, 96, (0.05, 0.14))
    assert sw.jitter == (0.8, 0.8, 0.8, 0.2) and view_config("simsiam", 224).blur_p == (0.5,)
    by = view_config("byol", 224)  # deepmind-research byol augmentations: asymmetric blur and solarisation
    assert (by.per_view(by.blur_p, "b"), by.per_view(by.solarize_p, "s")) == ([1.0, 0.1], [0.0, 0.2])
    assert by.jitter == (0.4, 0.4, 0.2, 0.1) and by.large_scale == (0.08, 1.0) and by.interpolation == "bicubic"
    with pytest.raises(ConfigError, match="Unknown view recipe"):
        view_config("nosuchmethod", 32)
    with pytest.raises(ConfigError, match="one per view"):
        ViewGenerator(ViewConfig(large_size=8, blur_p=(0.1, 0.2, 0.3)), 8, MEAN, STD)


def test_per_sample_randomness_and_views_differ():
    # one image repeated: any difference between rows comes from per-sample parameters
    x = _batch(1).repeat(8, 1, 1, 1)
    torch.manual_seed(0)
    v1, v2 = ViewGenerator("simsiam", 32, MEAN, STD)(x)
    assert len({v1[i].sum().item() for i in range(8)}) == 8
    assert not torch.allclose(v1, v2)


def test_reproducible_under_seed_and_generator():
    gen = ViewGenerator("swav", 32, MEAN, STD)
    x = _batch()
    torch.manual_seed(123)
    a = gen(x)
    torch.manual_seed(123)
    b = gen(x)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    state = torch.get_rng_state()
    c = gen(x, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    d = gen(x, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(p, q) for p, q in zip(c, d))


def test_identity_recipe_normalises_exactly():
    cfg = ViewConfig(
        large_size=32, large_scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0, n_large=1
    )
    x = _batch(4)
    (v,) = ViewGenerator(cfg, 32, MEAN, STD)(x)
    ref = (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(v, ref, atol=1e-4)


def test_value_range_after_normalisation():
    views = ViewGenerator("vicreg", 32, MEAN, STD)(_batch(16))
    lo = min((0 - m) / s for m, s in zip(MEAN, STD))
    hi = max((1 - m) / s for m, s in zip(MEAN, STD))
    for v in views:
        assert v.min() >= lo - 1e-5 and v.max() <= hi + 1e-5 and torch.isfinite(v).all()


def test_bad_batch_shape():
    with pytest.raises(DataError, match="N, 3, H, W"):
        ViewGenerator("vicreg", 32, MEAN, STD)(torch.zeros(3, 32, 32, dtype=torch.uint8))


def test_eval_transform_centre_crop_hand_made():
    img = torch.zeros(1, 3, 6, 8, dtype=torch.uint8)
    img[0, :, 1:5, 2:6] = 255  # the central 4x4 square is white
    out = eval_transform(img, (MEAN[:1] * 3, STD[:1] * 3), image_size=4, crop_pct=4 / 6)
    assert out.shape == (1, 3, 4, 4)
    assert torch.allclose(out, torch.full_like(out, (1 - 0.5) / 0.2))
    # square stored 8x8 -> crop 7 without resizing (7 / 0.875 = 8)
    x = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8).repeat(1, 3, 1, 1)
    info = DatasetInfo("t", "test", 1, 8, (0.0,) * 3, (1.0,) * 3, 1)
    y = eval_transform(x, info, image_size=7)
    assert torch.allclose(y[0, 0] * 255, x[0, 0, 0:7, 0:7].float(), atol=1e-4)


def test_eval_transform_resizes_down_then_crops_and_up():
    x = torch.full((2, 3, 64, 80), 128, dtype=torch.uint8)
    y = eval_transform(x, (MEAN, STD), image_size=28)  # 64 > 28/0.875 = 32: resize to 32, crop 28
    assert y.shape == (2, 3, 28, 28)
    assert torch.allclose(y[:, 0], torch.full_like(y[:, 0], (128 / 255 - 0.5) / 0.2), atol=1e-4)
    assert eval_transform(x, (MEAN, STD), image_size=96).shape == (2, 3, 96, 96)
    assert eval_transform(x, (MEAN, STD)).shape == (2, 3, 64, 64)
