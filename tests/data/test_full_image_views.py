"""Training views of streaming folders are cut from the FULL decoded image (e2mc.data.views).

Reference: a 500x375 image whose left 60 columns are red. The old path (shorter side resized to
256, centre 256 square kept) drops columns < 42 * 500 / 341 = 62 before any crop, so no view of
it could ever hold red; crops of the full image reach the border.
"""

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from e2mc.data.datasets import IMAGENET_MEAN, IMAGENET_STD, build_dataset
from e2mc.data.folder import StreamingImageFolder
from e2mc.data.views import ViewConfig, ViewGenerator, training_dataset, view_config
from e2mc.errors import ConfigError, DataError

W, H, RED_COLS = 500, 375, 60
NO_COLOUR = dict(jitter_p=0.0, gray_p=0.0, blur_p=(0.0,), solarize_p=(0.0,))  # crops untouched


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def red_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("redfolder")
    arr = np.zeros((H, W, 3), dtype=np.uint8)
    arr[:, :, 1] = 160  # green everywhere ...
    arr[:, :RED_COLS] = (255, 0, 0)  # ... but the left 60 columns
    for i, ext in enumerate(["png", "png", "jpg"]):
        path = os.path.join(root, "train", "a", f"{i}.{ext}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(arr).save(path, quality=95)
    return str(root)


def _streaming(root):
    ds = build_dataset(root, "train", image_size=256, max_memory_gb=0)  # too big for memory: streams
    assert isinstance(ds, StreamingImageFolder)
    return ds


def _red_fraction(views):
    """Fraction of views (of all batches) that hold at least 20 clearly red pixels."""
    m = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    hits = []
    for v in views:
        x = (v * s + m) * 255
        red = (x[:, 0] > 200) & (x[:, 1] < 60) & (x[:, 2] < 60)
        hits.extend((red.flatten(1).sum(1) >= 20).tolist())
    return sum(hits) / len(hits)


@pytest.mark.parametrize(
    "recipe,shapes",
    [
        ("vicreg", [(3, 3, 224, 224)] * 2),
        ("simsiam", [(3, 3, 224, 224)] * 2),
        ("swav", [(3, 3, 224, 224)] * 2 + [(3, 3, 96, 96)] * 6),
    ],
)
def test_training_views_reach_the_border(red_folder, recipe, shapes):
    ds = _streaming(red_folder)
    torch.manual_seed(0)
    gen = ViewGenerator(view_config(recipe, 256, **NO_COLOUR), 256, IMAGENET_MEAN, IMAGENET_STD)
    loader = DataLoader(training_dataset(ds, gen), batch_size=3)
    views = []
    for _ in range(5):
        for images, _labels in loader:
            out = gen(images)
            assert [tuple(v.shape) for v in out] == shapes  # (c) count and shapes per method
            views.extend(out)
    assert _red_fraction(views) > 0.02  # (a) some views hold red: crops come from the full image
    assert _red_fraction(views) < 0.9  # and not every view (a 60-column strip of 500)


@pytest.mark.parametrize("recipe", ["vicreg", "simsiam", "swav"])
def test_full_recipe_views_shapes_through_the_loader(red_folder, recipe):
    ds = _streaming(red_folder)
    gen = ViewGenerator(recipe, 256, IMAGENET_MEAN, IMAGENET_STD)
    images, _ = next(iter(DataLoader(training_dataset(ds, gen), batch_size=2)))
    n_large, n_small = (2, 6) if recipe == "swav" else (2, 0)
    assert [tuple(x.shape) for x in images] == [(2, 3, 224, 224)] * n_large + [(2, 3, 96, 96)] * n_small
    assert all(x.dtype == torch.uint8 for x in images)
    out = gen(images)
    assert len(out) == n_large + n_small and all(torch.isfinite(v).all() for v in out)
    # the dataset itself (evaluation, probes) still gives the resized centre square
    assert tuple(ds[0][0].shape) == (3, 256, 256)


def _ramp():
    """R encodes the column, G the row: a crop's value ranges give its width and height."""
    x = torch.linspace(0, 255, W).round().to(torch.uint8)
    y = torch.linspace(0, 255, H).round().to(torch.uint8)
    img = torch.zeros(3, H, W, dtype=torch.uint8)
    img[0] = x.view(1, W)
    img[1] = y.view(H, 1)
    return img


def _areas(crops):
    """Area fraction of each uint8 crop (3, s, s) of the ramp, from its R and G ranges."""
    out = []
    for c in crops:
        r, g = c[0].float(), c[1].float()
        out.append(float((r.max() - r.min()) / 255 * (g.max() - g.min()) / 255))
    return np.array(out)


@pytest.mark.parametrize("recipe,lo,hi", [("vicreg", 0.08, 1.0), ("simsiam", 0.2, 1.0), ("swav", 0.14, 1.0)])
def test_large_crop_areas_span_the_recipe_scale(recipe, lo, hi):
    cfg = view_config(recipe, 256)
    assert cfg.large_scale == (lo, hi)
    crops = ViewGenerator(cfg, 256, IMAGENET_MEAN, IMAGENET_STD).loader_crops()
    large = crops.crops[0]  # the worker's crop of view 1 (all large views share the spec)
    img = _ramp()
    torch.manual_seed(1)
    a = _areas([large(img) for _ in range(200)])
    assert a.min() >= lo - 0.02 and a.max() <= hi + 1e-6
    assert a.min() < lo + 0.07 and a.max() > 0.85  # (b) the draws span the range
    if recipe == "swav":  # the 6 small crops: scale (0.05, 0.14), 96 px
        assert len(crops.crops) == 8
        small = [crops.crops[k](img) for k in range(2, 8) for _ in range(20)]
        assert all(tuple(v.shape) == (3, 96, 96) for v in small)
        s = _areas(small)
        assert s.min() >= 0.045 and s.max() <= 0.15 and s.min() < 0.065 and s.max() > 0.125


def test_loader_crops_follow_the_view_config():
    # one source of truth: a changed ViewConfig changes the worker crops
    cfg = ViewConfig(
        "custom",
        large_size=40,
        n_large=1,
        large_scale=(0.5, 0.5),
        small_size=16,
        n_small=2,
        small_scale=(0.01, 0.01),
        ratio=(1.0, 1.0),
    )
    crops = pickle.loads(pickle.dumps(ViewGenerator(cfg, 64, IMAGENET_MEAN, IMAGENET_STD).loader_crops()))
    torch.manual_seed(0)  # (pickled: spawn-started DataLoader workers receive it that way)
    out = crops(_ramp())
    assert [tuple(v.shape) for v in out] == [(3, 40, 40), (3, 16, 16), (3, 16, 16)]
    side = (0.5 * W * H) ** 0.5  # square crop of half the area: 306 px
    r = out[0][0].float()
    assert abs((r.max() - r.min()) / 255 * W - side) < 12


def test_precropped_views_equal_the_crops_without_augmentation():
    cfg = ViewConfig("plain", large_size=8, n_large=2, flip_p=0.0, jitter_p=0.0, gray_p=0.0)
    gen = ViewGenerator(cfg, 8, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    crops = [torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8) for _ in range(2)]
    out = gen(crops)
    m = torch.tensor((0.5, 0.4, 0.3)).view(1, 3, 1, 1)
    s = torch.tensor((0.2, 0.25, 0.3)).view(1, 3, 1, 1)
    for v, c in zip(out, crops):
        torch.testing.assert_close(v, (c.float() / 255 - m) / s)
    with pytest.raises(DataError, match="training_dataset"):
        gen([crops[0]])  # one batch where the recipe makes two views
    with pytest.raises(ConfigError, match="interpolation"):
        ViewGenerator(ViewConfig(large_size=8, interpolation="lanczos"), 8, (0.5,) * 3, (0.2,) * 3)


def test_in_memory_datasets_keep_device_crops():
    ds = build_dataset("digits", "train", image_size=16, limit=20)
    gen = ViewGenerator("vicreg", 16, ds.info.mean, ds.info.std)
    assert training_dataset(ds, gen) is ds  # the stored image is the full image
    images, _ = next(iter(DataLoader(ds, batch_size=4)))
    assert [tuple(v.shape) for v in gen(images)] == [(4, 3, 16, 16)] * 2


def test_trainer_streams_full_image_crops(red_folder, tmp_path):
    from e2mc.config import load_config
    from e2mc.data.views import LoaderCrops
    from e2mc.train.loop import Trainer

    # an extracted ImageNet folder always streams; at 64 px the views are 64 px crops of the full image
    cfg = load_config(
        None,
        [
            "data.dataset=imagenet",
            f"data.root={red_folder}",
            "data.image_size=64",
            "model.init=random:resnet_mini:8-16-32",
            "model.head_sizes={projector: [32, 32]}",
            "optim.batch_size=3",
            "addon.name=none",
            "train.max_steps=1",
            "train.probe_size=0",
            "train.tensorboard=false",
            f"out.dir={tmp_path / 'run'}",
            "mode=pretrain",
        ],
    )
    trainer = Trainer(cfg)
    assert isinstance(trainer.loader.dataset.transform, LoaderCrops)
    assert trainer.loader.dataset.transform.cfg is trainer.views.cfg  # one recipe for loader and device
    images, _ = next(iter(trainer.loader))
    assert [tuple(x.shape) for x in images] == [(3, 3, 64, 64)] * 2
    trainer.fit()
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()
