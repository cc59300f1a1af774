"""Issue 11 item 7: a broken feature-cache entry is reported, deleted and recomputed; --no-cache.
(Issue 17: an entry is a folder of fp16 .npy memory maps with progress.json.)"""

import json
import logging

import numpy as np
import pytest
import torch

from e2mc.cli import main
from e2mc.evaluation.features import extract_features
from tests.evaluate.conftest import TinyNet, colour_dataset

WHICH = ("backbone", "projector")


def _truncate(p):
    f = p / "backbone.npy"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _garbage(p):
    (p / "backbone.npy").write_bytes(b"\x00\xff" * 300)


def _empty(p):
    (p / "backbone.npy").write_bytes(b"")


def _no_projector(p):
    (p / "projector.npy").unlink()


def _wrong_n(p):
    np.save(p / "backbone.npy", np.load(p / "backbone.npy")[:-3])


def _no_labels(p):
    (p / "labels.npy").unlink()


def _nan_features(p):
    a = np.load(p / "backbone.npy", mmap_mode="r+")
    a[0, 0] = np.nan
    a.flush()


def _bad_progress(p):
    (p / "progress.json").write_text("{not json")


def _progress_beyond_n(p):
    prog = json.loads((p / "progress.json").read_text())
    (p / "progress.json").write_text(json.dumps({**prog, "rows": prog["n"] + 5, "complete": False}))


def _float32_file(p):  # the right shape, but not the recorded dtype
    np.save(p / "backbone.npy", np.load(p / "backbone.npy").astype(np.float32))


@pytest.mark.parametrize(
    "damage",
    [
        _truncate,
        _garbage,
        _empty,
        _no_projector,
        _wrong_n,
        _no_labels,
        _nan_features,
        _bad_progress,
        _progress_beyond_n,
        _float32_file,
    ],
)
def test_broken_entry_is_reported_deleted_and_recomputed(tmp_path, caplog, damage):
    net, data = TinyNet(0), colour_dataset(10, seed=0)
    first = extract_features(net, data, which=WHICH, cache_dir=tmp_path)
    first = {w: first[w].clone() for w in WHICH}  # the damage below edits the files these map
    (entry,) = [p.parent for p in tmp_path.glob("*/progress.json")]
    damage(entry)
    with caplog.at_level(logging.WARNING, logger="e2mc.evaluation.features"):
        again = extract_features(net, data, which=WHICH, cache_dir=tmp_path)
    fresh = extract_features(TinyNet(0), data, which=WHICH, use_cache=False)  # independent computation (fp16 too)
    assert not again.meta["cached"]
    for w in WHICH:
        assert torch.equal(again[w], fresh[w]) and torch.equal(again[w], first[w])
    assert torch.equal(again.labels, fresh.labels)
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "\n" not in msg and str(entry) in msg and "recomputing" in msg
    # the entry was rewritten whole: the next call reads it from the cache
    third = extract_features(net, data, which=WHICH, cache_dir=tmp_path)
    assert third.meta["cached"] and torch.equal(third["projector"], fresh["projector"])


def test_unwritable_cache_warns_and_still_returns_features(tmp_path, caplog):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    net, data = TinyNet(0), colour_dataset(5, seed=0)
    with caplog.at_level(logging.WARNING, logger="e2mc.evaluation.features"):
        fs = extract_features(net, data, cache_dir=blocker / "sub")
    assert fs["backbone"].shape == (15, 8) and "could not write the feature cache" in caplog.text


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """One fixed random resnet_mini checkpoint file (a random: name would differ on every call)."""
    from e2mc.models.checkpoints import load_model
    from e2mc.models.export import export_model

    torch.manual_seed(0)
    model, report = load_model("random:resnet_mini:8-8-8", method="vicreg", head_sizes={"projector": [16, 16]})
    return export_model(model, report, tmp_path_factory.mktemp("ckpt") / "model.pt", format="e2mc")


def _evaluate(ckpt, cache, *extra, command="evaluate"):
    return main(
        [
            command,
            str(ckpt),
            "--dataset",
            "digits",
            "--protocols",
            "rankme",
            "--seeds",
            "0",
            "--image-size",
            "8",
            "--cache-dir",
            str(cache),
            *extra,
        ]
    )


def test_cli_no_cache_writes_nothing(ckpt, tmp_path, capsys):
    torch.set_num_threads(1)
    assert _evaluate(ckpt, tmp_path / "c1", "--no-cache") == 0
    assert not (tmp_path / "c1").exists()
    assert _evaluate(ckpt, tmp_path / "c2") == 0
    assert len(list((tmp_path / "c2").glob("*/progress.json"))) == 1
    out = capsys.readouterr().out
    a, b = [line for line in out.splitlines() if "backbone" in line]
    assert a == b  # same model, same result with and without the cache


def test_cli_broken_entry_then_evaluate_still_works(ckpt, tmp_path, capsys, caplog):
    torch.set_num_threads(1)
    assert _evaluate(ckpt, tmp_path) == 0
    (entry,) = [p.parent for p in tmp_path.glob("*/progress.json")]
    _truncate(entry)
    with caplog.at_level(logging.WARNING, logger="e2mc.evaluation.features"):
        assert _evaluate(ckpt, tmp_path) == 0
    assert "unreadable or incomplete" in caplog.text and "Traceback" not in capsys.readouterr().err
    assert json.loads((entry / "progress.json").read_text())["complete"]  # rewritten whole
    assert np.load(entry / "backbone.npy", mmap_mode="r").dtype == np.float16


def test_cli_compare_has_no_cache(ckpt, tmp_path):
    torch.set_num_threads(1)
    assert _evaluate(ckpt, tmp_path / "c", "--no-cache", command="compare") == 0
    assert not (tmp_path / "c").exists()
