"""Image folders: one class list for every split, no silent test = train (e2mc.data.folder/datasets).

The folders hold tiny PNGs whose colour IS the class (red, green, blue plus noise), so each
image's true class name can be read back from its pixels, independently of e2mc's labels.
"""

import os

import numpy as np
import pytest
from PIL import Image

from e2mc.data.datasets import ArrayDataset, build_dataset
from e2mc.data.folder import StreamingImageFolder
from e2mc.errors import DataError

COLOURS = {"blue": 2, "green": 1, "red": 0}  # class name -> its bright channel


def make_colour_folder(root, layout, size=8, seed=0):
    """``layout``: {split or None: {class: n_images}}; None puts the class folders under root."""
    rng = np.random.default_rng(seed)
    for split, classes in layout.items():
        for name, n in classes.items():
            d = os.path.join(root, split, name) if split else os.path.join(root, name)
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                img[..., COLOURS[name]] += 180
                Image.fromarray(img).save(os.path.join(d, f"{i}.png"))
    return str(root)


def colour_names(ds):
    """The class name of every item, read from its pixels (the independent reference)."""
    by_channel = {c: n for n, c in COLOURS.items()}
    return [by_channel[int(ds[i][0].float().mean(dim=(1, 2)).argmax())] for i in range(len(ds))]


def assert_labels_follow_names(ds, classes):
    assert ds.classes == classes
    assert [classes[t] for t in ds.targets] == colour_names(ds)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("E2MC_CACHE", str(tmp_path / "cache"))


FULL = {"blue": 4, "green": 4, "red": 4}


@pytest.mark.parametrize(
    "train,test",
    [
        (FULL, {"blue": 2, "green": 2, "red": 2}),
        ({"blue": 0, "green": 4, "red": 4}, {"blue": 2, "green": 2, "red": 2}),  # empty in train/
        (FULL, {"green": 2, "red": 2}),  # a class missing from test/
        (FULL, {"blue": 2, "green": 0, "red": 2}),  # an empty class folder in test/
    ],
)
def test_one_class_list_for_both_splits(tmp_path, train, test):
    root = make_colour_folder(tmp_path / "f", {"train": train, "test": test})
    tr = build_dataset(root, "train")
    if not train["blue"]:
        with pytest.warns(UserWarning, match=r"\[blue\] have images in test/ but none in train/"):
            te = build_dataset(root, "test")
    else:
        te = build_dataset(root, "test")
    classes = ["blue", "green", "red"]
    assert_labels_follow_names(tr, classes)
    assert_labels_follow_names(te, classes)
    assert tr.info.num_classes == te.info.num_classes == 3
    # the test split is normalised and sized like the training split
    assert (te.info.mean, te.info.std, te.info.image_size) == (tr.info.mean, tr.info.std, tr.info.image_size)


def test_streaming_folder_uses_the_same_class_list(tmp_path):
    root = make_colour_folder(
        tmp_path / "f", {"train": {"blue": 0, "green": 3, "red": 3}, "test": {"green": 2, "red": 2}}
    )
    tr = build_dataset(root, "train", max_memory_gb=0)
    te = build_dataset(root, "test", max_memory_gb=0)
    assert isinstance(tr, StreamingImageFolder) and isinstance(te, StreamingImageFolder)
    assert_labels_follow_names(tr, ["blue", "green", "red"])
    assert_labels_follow_names(te, ["blue", "green", "red"])


def test_test_class_unknown_to_train_is_an_error(tmp_path):
    root = make_colour_folder(tmp_path / "f", {"train": {"green": 3, "red": 3}, "test": FULL})
    with pytest.raises(DataError, match=r"test/ .* class folder\(s\) \[blue\] that train/ lacks.*add their"):
        build_dataset(root, "test")


def test_missing_split_is_an_error_never_the_training_images(tmp_path):
    only_train = make_colour_folder(tmp_path / "a", {"train": FULL})
    assert isinstance(build_dataset(only_train, "train"), ArrayDataset)
    with pytest.raises(DataError, match=r"has no 'test' split .*it has train/\).*--test-split"):
        build_dataset(only_train, "test")
    no_splits = make_colour_folder(tmp_path / "b", {None: FULL})
    assert_labels_follow_names(build_dataset(no_splits, "train"), ["blue", "green", "red"])
    with pytest.raises(DataError, match=r"has no 'test' split: its images are not in split folders.*train/<class>"):
        build_dataset(no_splits, "test")
    only_test = make_colour_folder(tmp_path / "c", {"test": FULL})
    with pytest.raises(DataError, match=r"has no 'train' split .*data.split"):
        build_dataset(only_test, "train")


def test_constant_channel_does_not_give_nan(tmp_path):
    """Pure colours: a channel that is 0 everywhere has std 1/255 (one grey level), not 0."""
    root = tmp_path / "f"
    for name, ch in (("green", 1), ("red", 0)):
        os.makedirs(root / "train" / name)
        img = np.zeros((4, 4, 3), np.uint8)
        img[..., ch] = 255
        for i in range(2):
            Image.fromarray(img).save(root / "train" / name / f"{i}.png")
    ds = build_dataset(str(root), "train")
    assert ds.info.std[2] == pytest.approx(1 / 255, abs=1e-6) and ds.info.std[0] == pytest.approx(0.5)
