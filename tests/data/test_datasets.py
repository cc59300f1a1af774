"""Digits, torchvision datasets, subsets and loaders (e2mc.data.datasets)."""

import os
from collections import Counter

import numpy as np
import pytest
import torch

from e2mc.data.datasets import ArrayDataset, DatasetInfo, build_dataset, channel_stats, first_per_class
from e2mc.errors import DataError
from e2mc.train.distributed import ShardedEpochSampler

CIFAR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "cifar10")


def test_digits_shapes_labels_and_split_counts():
    from sklearn.datasets import load_digits

    tr, te = build_dataset("digits", "train"), build_dataset("digits", "test")
    assert len(tr) + len(te) == 1797
    assert len(te) == 450  # ceil(0.25 * 1797)
    x, y = tr[0]
    assert x.dtype == torch.uint8 and x.shape == (3, 16, 16) and isinstance(y, int)
    assert tr.info == DatasetInfo("digits", "train", 10, 16, tr.info.mean, tr.info.std, len(tr))
    assert tr.classes == [str(i) for i in range(10)]
    # stratified: each class's share in train matches the full set within one sample
    full = Counter(load_digits().target.tolist())
    ctr, cte = Counter(tr.targets), Counter(te.targets)
    for c in range(10):
        assert ctr[c] + cte[c] == full[c]
        assert abs(cte[c] - 0.25 * full[c]) <= 1


def test_digits_deterministic_disjoint_and_values():
    from sklearn.datasets import load_digits

    a, b = build_dataset("digits", "train", image_size=8), build_dataset("digits", "train", image_size=8)
    assert torch.equal(a.images, b.images) and a.targets == b.targets
    te = build_dataset("digits", "test", image_size=8)
    # at native size the pixels are exactly round(v * 255 / 16); rows come from the source set
    src = np.round(load_digits().images * 255 / 16).astype(np.uint8)
    keys = {bytes(im.tobytes()) for im in src}
    assert a.images[:, 0].shape[-1] == 8
    assert torch.equal(a.images[:, 0], a.images[:, 2])  # grey replicated to 3 channels
    assert all(bytes(im[0].numpy().tobytes()) in keys for im in a.images[:50])
    tr_set = {bytes(im[0].numpy().tobytes()) + bytes([t]) for im, t in zip(a.images, a.targets)}
    te_set = {bytes(im[0].numpy().tobytes()) + bytes([t]) for im, t in zip(te.images, te.targets)}
    assert len(tr_set & te_set) <= 5  # the digits set holds a few exact duplicates, no more


def test_digits_mean_std_from_train_split():
    tr, te = build_dataset("digits", "train"), build_dataset("digits", "test")
    x = tr.images.double() / 255
    ref_mean = x.mean(dim=(0, 2, 3))
    ref_std = x.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1, unbiased=False)
    assert np.allclose(tr.info.mean, ref_mean.numpy(), atol=1e-5)
    assert np.allclose(tr.info.std, ref_std.numpy(), atol=1e-5)
    assert te.info.mean == tr.info.mean  # the test split is normalised with train statistics


def test_channel_stats_matches_naive():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (7, 3, 5, 4), dtype=torch.uint8)
    mean, std = channel_stats(x)
    f = x.double() / 255
    assert np.allclose(mean, f.mean(dim=(0, 2, 3)).numpy(), atol=1e-6)
    assert np.allclose(std, f.transpose(0, 1).reshape(3, -1).std(1, unbiased=False).numpy(), atol=1e-6)


def test_limit_is_class_balanced():
    ds = build_dataset("digits", "train", limit=25)
    counts = Counter(ds.targets)
    assert len(ds) == 25 and ds.info.num_samples == 25
    assert sorted(counts.values()) == [2] * 5 + [3] * 5
    assert first_per_class([1, 1, 0, 0, 0, 2], 4) == [0, 2, 3, 5]


def test_torchvision_cifar_missing_files_says_download(tmp_path):
    with pytest.raises(DataError, match="download=True") as err:
        build_dataset("cifar10", "train", root=str(tmp_path))
    assert str(tmp_path) in str(err.value)
    with pytest.raises(DataError, match="splits"):
        build_dataset("cifar100", "val", root=str(tmp_path))


def test_imagenet_missing_explains_layout(tmp_path):
    with pytest.raises(DataError, match="ILSVRC2012"):
        build_dataset("imagenet", "val", root=str(tmp_path))


def test_bad_arguments():
    with pytest.raises(DataError, match="Unknown dataset"):
        build_dataset("mnist-ish")
    with pytest.raises(DataError, match="on_error"):
        build_dataset("digits", on_error="ignore")
    with pytest.raises(DataError, match="splits"):
        build_dataset("digits", "val")
    with pytest.raises(DataError, match="uint8"):
        ArrayDataset(torch.zeros(2, 3, 4, 4), [0, 1], [], None)


def test_training_sampler_deterministic_per_epoch_and_sharded():
    """The trainer's sampler: order fixed by (seed, epoch); ranks split each global batch."""

    def order(epoch, seed=3, rank=0, world=1, start=0):
        s = ShardedEpochSampler(100, 8, seed, rank=rank, world_size=world)
        s.set_epoch(epoch, start)
        return list(s)

    a = order(0)
    assert len(a) == 96 and len(set(a)) == 96  # 12 full batches, no repeats, the rest dropped
    assert order(0) == a and order(1) != a and order(0, seed=4) != a
    assert a == torch.randperm(100, generator=torch.Generator().manual_seed(3))[:96].tolist()
    r0, r1 = order(0, rank=0, world=2), order(0, rank=1, world=2)  # 6 global batches of 16
    assert len(r0) == len(r1) == 48 and not set(r0) & set(r1)
    assert r0[:8] + r1[:8] == a[:16] and r0[8:16] + r1[8:16] == a[16:32]
    assert order(0, start=3) == a[24:]  # mid-epoch resume skips whole batches


@pytest.mark.skipif(not os.path.isdir(CIFAR), reason="shared CIFAR-10 folder not present")
def test_real_cifar10_folder_small_limit(tmp_path):
    ds = build_dataset(CIFAR, "test", limit=30, cache_dir=str(tmp_path))
    assert len(ds) == 30 and ds.images.shape == (30, 3, 32, 32)
    assert Counter(ds.targets) == {c: 3 for c in range(10)}
    assert ds.classes[0] == "airplane" and ds.info.num_classes == 10
