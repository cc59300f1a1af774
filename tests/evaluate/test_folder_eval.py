"""Evaluating on image folders gives the numbers correct labels give (issue 12, item 1).

Three colour classes are trivially separable, so with correct labels kNN and the linear probe
score 1.0 on every test image whose class has training images, and 0 on the others.
"""

import contextlib

import pytest

from e2mc.cli import main
from e2mc.errors import DataError
from e2mc.evaluation.api import evaluate
from tests.data.test_folder_splits import make_colour_folder

FULL = {"blue": 5, "green": 5, "red": 5}
TEST = {"blue": 3, "green": 3, "red": 3}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("E2MC_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize(
    "train,test,expected",
    [
        (FULL, TEST, 1.0),
        ({"blue": 0, "green": 5, "red": 5}, TEST, 6 / 9),  # was 0.50: labels shifted by the empty folder
        (FULL, {"green": 3, "red": 3}, 1.0),  # was 0.00: test labels shifted by the missing class
    ],
)
def test_knn_and_linear_probe_score_what_correct_labels_give(tmp_path, tiny_net, train, test, expected):
    root = make_colour_folder(tmp_path / "f", {"train": train, "test": test})
    empty = pytest.warns(UserWarning, match=r"\[blue\] have images in test/ but none in train/")
    with empty if not train["blue"] else contextlib.nullcontext():
        settings = {
            "eval.knn.ks": [1, 3],
            "eval.seeds": [0],
            "eval.device": "cpu",
            "eval.cache_dir": str(tmp_path / "feat"),
        }
        res = evaluate(tiny_net, root, ("knn", "linear"), settings)
    assert res["meta"]["n_test"] == sum(test.values()) and res["meta"]["test_split"] == "test"
    assert res["knn"]["top1_k1"] == pytest.approx(expected) and res["knn"]["top1_k3"] == pytest.approx(expected)
    assert res["linear"]["top1"] == pytest.approx(expected)


def test_folder_without_test_split_is_not_scored_on_its_training_images(tmp_path, tiny_net, capsys):
    root = make_colour_folder(tmp_path / "f", {None: FULL})
    with pytest.raises(DataError, match="no 'test' split"):
        evaluate(
            tiny_net, root, ("knn",), {"eval.knn.ks": [1], "eval.device": "cpu", "eval.cache_dir": str(tmp_path / "x")}
        )
    only_train = make_colour_folder(tmp_path / "g", {"train": FULL})
    rc = main(
        [
            "evaluate",
            "random:resnet_mini:8-16-32",
            "--dataset",
            only_train,
            "--protocols",
            "knn",
            "--ks",
            "1",
            "--seeds",
            "0",
            "--device",
            "cpu",
            "--cache-dir",
            str(tmp_path / "x"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "has no 'test' split" in err and "Traceback" not in err


def test_pairs_with_different_class_lists_are_refused(tiny_net, colour_data):
    train, test = colour_data
    train.classes, test.classes = ["a", "b", "c"], ["b", "c"]
    with pytest.raises(DataError, match=r"different class lists \(3 vs 2 classes; index 0 is 'a' vs 'b'\)"):
        evaluate(tiny_net, (train, test), ("knn",), {"eval.knn.ks": [1], "eval.device": "cpu", "eval.use_cache": False})


def test_cached_features_never_carry_stale_labels(tmp_path, tiny_net):
    """Relabelling a dataset (e.g. a fixed class list) must not reuse features cached with old labels."""
    from e2mc.data.datasets import build_dataset
    from e2mc.evaluation.features import extract_features

    ds = build_dataset("digits", "test", image_size=8, limit=30)
    first = extract_features(tiny_net, ds, cache_dir=tmp_path)
    assert first.labels.tolist() == ds.targets
    ds.targets = [(t + 1) % 10 for t in ds.targets]
    again = extract_features(tiny_net, ds, cache_dir=tmp_path)
    assert again.labels.tolist() == ds.targets and again.key != first.key
    assert extract_features(tiny_net, ds, cache_dir=tmp_path).meta["cached"]  # the cache still works
