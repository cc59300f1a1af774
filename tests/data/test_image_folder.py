"""Image folders: layouts, unreadable files, the on-disk cache, streaming (e2mc.data.folder)."""

import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from e2mc.data import folder as folder_mod
from e2mc.data.datasets import ArrayDataset, build_dataset
from e2mc.data.folder import StreamingImageFolder, scan_folder
from e2mc.errors import DataError


def _write(path, seed, size=(12, 10), fmt=None):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return arr


def _make_tree(root, split=True, corrupt=True):
    base = os.path.join(root, "train") if split else root
    arrays = {}
    for c, cls in enumerate(["cat", "dog"]):
        for i in range(3):
            p = os.path.join(base, cls, f"{i}.png")
            arrays[p] = (_write(p, seed=10 * c + i), c)
    _write(os.path.join(base, "dog", "x.jpg"), seed=99)
    if corrupt:
        with open(os.path.join(base, "cat", "broken.jpg"), "wb") as fh:
            fh.write(b"\xff\xd8 this is not a jpeg")
    return base, arrays


def test_split_layout_decodes_and_resizes(tmp_path):
    base, arrays = _make_tree(str(tmp_path), corrupt=False)
    ds = build_dataset(str(tmp_path), "train", image_size=8, cache_dir=str(tmp_path / "c"))
    assert isinstance(ds, ArrayDataset) and len(ds) == 7 and ds.classes == ["cat", "dog"]
    assert ds.images.shape == (7, 3, 8, 8) and sorted(ds.targets) == [0, 0, 0, 1, 1, 1, 1]
    # independent reference: PIL resize (16x10 -> 12x8, shorter side 8) + centre crop 8x8
    yy, xx = np.mgrid[0:10, 0:16]
    smooth = np.stack([xx * 15, yy * 25, 255 - xx * 15], -1).astype(np.uint8)
    p = os.path.join(base, "cat", "a.png")  # sorts after 0-2.png: row 3
    Image.fromarray(smooth).save(p)
    ds = build_dataset(str(tmp_path), "train", image_size=8, cache_dir=str(tmp_path / "c"))
    ref = np.asarray(Image.fromarray(smooth).resize((12, 8), Image.BILINEAR))[:, 2:10]
    got = ds.images[3].permute(1, 2, 0).numpy()
    assert np.abs(got.astype(float) - ref).max() <= 8


def test_native_size_is_exact_and_no_split_dirs(tmp_path):
    base, arrays = _make_tree(str(tmp_path), split=False, corrupt=False)
    ds = build_dataset(str(tmp_path), "train", image_size=10, cache_dir=str(tmp_path / "c"))
    first = arrays[os.path.join(base, "cat", "0.png")][0]
    assert torch.equal(ds.images[0], torch.from_numpy(first[:, 1:11]).permute(2, 0, 1))
    assert scan_folder(str(tmp_path), "train").layout == "classes"


def test_corrupt_file_skip_counts_and_raise_names(tmp_path, caplog):
    _make_tree(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(str(tmp_path), image_size=8, cache_dir=str(tmp_path / "c1"))
    assert len(ds) == 7 and len(ds.skipped) == 1 and ds.skipped[0].endswith("broken.jpg")
    assert "skipped 1 unreadable" in caplog.text
    with pytest.raises(DataError, match="broken.jpg"):
        build_dataset(str(tmp_path), image_size=8, cache_dir=str(tmp_path / "c2"), on_error="raise")
    # read again from the cache: the skip is said again, and a reader that raises is not given the
    # skipping read's cached images (a new user's trial: evaluation skipped silently from the 2nd read on)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = build_dataset(str(tmp_path), image_size=8, cache_dir=str(tmp_path / "c1"))
    assert len(again) == 7 and "skipped 1 unreadable" in caplog.text
    with pytest.raises(DataError, match="broken.jpg.*first decoded and cached"):
        build_dataset(str(tmp_path), image_size=8, cache_dir=str(tmp_path / "c1"), on_error="raise")


def test_flat_folder_has_unknown_labels(tmp_path):
    for i in range(4):
        _write(str(tmp_path / f"img{i}.png"), seed=i)
    ds = build_dataset(str(tmp_path), image_size=6, cache_dir=str(tmp_path / "c"))
    assert len(ds) == 4 and ds.targets == [-1] * 4 and ds.classes == [] and ds.info.num_classes == 0


def test_missing_and_empty_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist.*<class>"):
        build_dataset(str(tmp_path / "nope"))
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="No images or recordings found.*Expected"):
        build_dataset(str(tmp_path / "empty"))


def test_cache_second_load_reads_cache(tmp_path, monkeypatch):
    _make_tree(str(tmp_path))
    cache = str(tmp_path / "cache")
    first = build_dataset(str(tmp_path), image_size=8, cache_dir=cache)
    files = sorted(os.listdir(cache))
    assert [f.rsplit(".", 1)[1] for f in files] == ["json", "npy"]

    def boom(*a, **k):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(folder_mod, "decode_files", boom)
    second = build_dataset(str(tmp_path), image_size=8, cache_dir=cache)
    assert torch.equal(first.images, second.images) and first.targets == second.targets
    assert first.info == second.info and second.skipped == first.skipped
    # a changed file list invalidates the key
    _write(os.path.join(str(tmp_path), "train", "cat", "new.png"), seed=5)
    with pytest.raises(AssertionError, match="decoded again"):
        build_dataset(str(tmp_path), image_size=8, cache_dir=cache)


def test_cache_dir_from_env(tmp_path, monkeypatch):
    _make_tree(str(tmp_path / "d"), corrupt=False)
    monkeypatch.setenv("E2MC_CACHE", str(tmp_path / "env"))
    build_dataset(str(tmp_path / "d"), image_size=8)
    assert len(os.listdir(tmp_path / "env" / "datasets")) == 2


def test_streaming_skips_deterministically_and_raises(tmp_path):
    base, _ = _make_tree(str(tmp_path))
    scan = scan_folder(str(tmp_path), "train")
    samples = list(zip(scan.paths, scan.targets))
    bad = [i for i, (p, _) in enumerate(samples) if p.endswith("broken.jpg")][0]
    ds = StreamingImageFolder(samples, scan.classes, load_size=8)
    img, y = ds[bad]
    ref, ref_y = ds[bad + 1]
    assert img.shape == (3, 8, 8) and torch.equal(img, ref) and y == ref_y
    assert ds.skipped == [samples[bad][0]]
    strict = StreamingImageFolder(samples, scan.classes, load_size=8, on_error="raise")
    with pytest.raises(DataError, match="broken.jpg"):
        strict[bad]


def test_large_folder_streams(tmp_path):
    _make_tree(str(tmp_path), corrupt=False)
    ds = build_dataset(str(tmp_path), image_size=8, max_memory_gb=1e-9)
    assert isinstance(ds, StreamingImageFolder) and len(ds) == 7 and ds.info.image_size == 8
    assert ds[0][0].shape == (3, 8, 8)


def test_imagenet_extracted_folder_streams_with_limit(tmp_path):
    for c, wnid in enumerate(["n01440764", "n01443537"]):
        for i in range(3):
            _write(str(tmp_path / "val" / wnid / f"ILSVRC2012_val_{c}{i}.JPEG"), seed=c * 3 + i, size=(20, 16))
    ds = build_dataset("imagenet", "val", root=str(tmp_path), image_size=12, limit=4)
    assert isinstance(ds, StreamingImageFolder) and ds.classes == ["n01440764", "n01443537"]
    assert len(ds) == 4 and sorted(ds.targets) == [0, 0, 1, 1] and ds.info.num_samples == 4
    assert ds.info.mean == (0.485, 0.456, 0.406)
    x, y = ds[3]
    assert x.shape == (3, 12, 12) and x.dtype == torch.uint8 and y == 1
