"""Issue 17: the feature cache is fp16 memory-mapped .npy, extraction resumes after an interruption,
and the protocols give the float32 accuracies on fp16 features; bad input gets one-line errors."""

import json
import logging
import os
from collections import namedtuple

import numpy as np
import pytest
import torch

from e2mc.errors import DataError
from e2mc.evaluation import features as F
from e2mc.evaluation.features import extract_features
from e2mc.evaluation.knn import knn_classify
from e2mc.evaluation.linear import linear_probe
from tests.evaluate.conftest import TinyNet, colour_dataset

WHICH = ("backbone", "projector")
BS = 7


def _entry(cache):
    (p,) = [p.parent for p in cache.glob("*/progress.json")]
    return p


def _interrupt_at(monkeypatch, k, exc=None, on_hit=None):
    """Make the k-th forward (0-based) of extract_features raise ``exc``; count the calls."""
    calls = []
    real = F._forward

    def forward(model, x, which):
        if len(calls) == k:
            if on_hit:
                on_hit()
            raise exc if exc is not None else RuntimeError("simulated crash")
        calls.append(x.shape[0])
        return real(model, x, which)

    monkeypatch.setattr(F, "_forward", forward)
    return calls


def test_interrupted_extraction_resumes_and_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    data = colour_dataset(20, seed=0)  # 60 images: 9 batches of 7
    ref = extract_features(TinyNet(0), data, which=WHICH, batch_size=BS, use_cache=False)
    _interrupt_at(monkeypatch, 4)
    with pytest.raises(DataError, match="continues from there") as err:
        extract_features(TinyNet(0), data, which=WHICH, batch_size=BS, cache_dir=tmp_path)
    assert "\n" not in str(err.value)
    prog = json.loads((_entry(tmp_path) / "progress.json").read_text())
    assert prog["rows"] == 4 * BS and not prog["complete"]
    monkeypatch.undo()
    calls = _interrupt_at(monkeypatch, 10**6)  # count only
    fs = extract_features(TinyNet(0), data, which=WHICH, batch_size=BS, cache_dir=tmp_path)
    assert fs.meta["resumed_from"] == 4 * BS and not fs.meta["cached"]
    assert sum(calls) == 60 - 4 * BS  # only the missing rows were computed
    for w in WHICH:
        assert fs[w].dtype == torch.float16
        torch.testing.assert_close(fs[w].float(), ref[w].float(), atol=1e-3, rtol=1e-3)
    assert torch.equal(fs.labels, data.tensors[1])
    assert json.loads((_entry(tmp_path) / "progress.json").read_text())["complete"]
    again = extract_features(TinyNet(0), data, which=WHICH, batch_size=BS, cache_dir=tmp_path)
    assert again.meta["cached"] and torch.equal(again["projector"], fs["projector"])


def test_a_kill_loses_only_the_rows_after_the_last_record(tmp_path, monkeypatch):
    """With progress recorded after every batch, the files on disk at the moment of a kill (here:
    inside the forward of batch 3, then a KeyboardInterrupt) hold the recorded rows; a fresh call
    continues from them."""
    monkeypatch.setattr(F, "PROGRESS_SECONDS", 0.0)
    data = colour_dataset(20, seed=0)
    ref = extract_features(TinyNet(0), data, batch_size=BS, use_cache=False)
    seen = {}

    def snapshot():
        e = _entry(tmp_path)
        seen["progress"] = json.loads((e / "progress.json").read_text())
        seen["rows"] = np.array(np.load(e / "backbone.npy", mmap_mode="r")[: 3 * BS])

    _interrupt_at(monkeypatch, 3, KeyboardInterrupt(), on_hit=snapshot)
    with pytest.raises(KeyboardInterrupt):
        extract_features(TinyNet(0), data, batch_size=BS, cache_dir=tmp_path)
    assert seen["progress"]["rows"] == 3 * BS
    np.testing.assert_array_equal(seen["rows"], ref["backbone"][: 3 * BS].numpy())
    monkeypatch.undo()
    fs = extract_features(TinyNet(0), data, batch_size=BS, cache_dir=tmp_path)
    assert fs.meta["resumed_from"] == 3 * BS
    torch.testing.assert_close(fs["backbone"].float(), ref["backbone"].float(), atol=1e-3, rtol=1e-3)


def test_model_runs_in_eval_mode_and_gets_its_mode_back_after_success_and_failure(tmp_path, monkeypatch):
    """BN uses its running statistics during extraction (eval mode), and a model in train mode is in
    train mode again afterwards, also when extraction fails half-way."""
    data = colour_dataset(4, seed=0)
    modes = []
    real = F._forward
    monkeypatch.setattr(F, "_forward", lambda model, x, which: modes.append(model.training) or real(model, x, which))
    net = TinyNet(0).train()
    fs = extract_features(net, data, batch_size=5, use_cache=False, transform=lambda b: b.float() / 255)
    assert net.training and modes == [False, False, False]
    with torch.no_grad():  # the reference: the same forward in eval mode, by hand, in one batch
        ref = TinyNet(0).eval().embed(data.tensors[0].float() / 255)
        in_train_mode = TinyNet(0).train().embed(data.tensors[0].float() / 255)
    torch.testing.assert_close(fs["backbone"].float(), ref, atol=2e-3, rtol=2e-3)
    assert not torch.allclose(in_train_mode, ref, atol=1e-2)  # the mode matters for this net
    _interrupt_at(monkeypatch, 1)
    with pytest.raises(DataError, match="failed at batch 1"):
        extract_features(net, data, batch_size=5, cache_dir=tmp_path)
    assert net.training


def _mapped_files():
    out = {}
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5].endswith(".npy"):
                lo, hi = (int(v, 16) for v in parts[0].split("-"))
                out.setdefault(parts[5], []).append((lo, hi))
    return out


def test_cache_file_is_fp16_npy_and_returned_memory_mapped(tmp_path):
    data = colour_dataset(10, seed=0)
    extract_features(TinyNet(0), data, cache_dir=tmp_path)
    fs = extract_features(TinyNet(0), data, cache_dir=tmp_path)  # from the cache
    path = _entry(tmp_path) / "backbone.npy"
    a = np.load(path, mmap_mode="r")
    assert isinstance(a, np.memmap) and a.dtype == np.float16 and a.shape == (30, 8)
    np.testing.assert_array_equal(a, fs["backbone"].numpy())
    # the returned tensor's memory IS the file's mapping (no in-memory copy)
    ptr = fs["backbone"].data_ptr()
    ranges = _mapped_files().get(str(path.resolve()), [])
    assert any(lo <= ptr < hi for lo, hi in ranges), ranges
    # copy-on-write: editing the returned tensor never changes the cache
    fs["backbone"][0, 0] = 123.0
    assert np.load(path)[0, 0] != 123.0


def test_float32_option(tmp_path):
    data = colour_dataset(10, seed=0)
    fs = extract_features(TinyNet(0), data, cache_dir=tmp_path, cache_dtype="float32")
    assert np.load(_entry(tmp_path) / "backbone.npy", mmap_mode="r").dtype == np.float32
    ref = extract_features(TinyNet(0), data, use_cache=False, cache_dtype="float32")
    assert fs["backbone"].dtype == torch.float32 and torch.equal(fs["backbone"], ref["backbone"])
    with pytest.raises(DataError, match="cache_dtype must be one of float16, float32"):
        extract_features(TinyNet(0), data, cache_dir=tmp_path, cache_dtype="bfloat16")


def test_features_that_do_not_fit_the_disk(tmp_path, monkeypatch):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(F.shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 1000, 1000))
    data = colour_dataset(10, seed=0)  # 30 x (8 + 6) fp16 + labels = 1080 bytes > 1000 free
    with pytest.raises(DataError) as err:
        extract_features(TinyNet(0), data, which=WHICH, cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert "\n" not in msg and "0.0 GiB free" in msg and "--no-cache" in msg and "--cache-dir" in msg
    assert not list((tmp_path / "c").glob("*/*"))  # nothing half-written left (only the entry's lock file)
    fs = extract_features(TinyNet(0), data, which=WHICH, use_cache=False)  # the way out the message names
    assert fs["backbone"].shape == (30, 8)


def test_fp16_overflow_and_nan_features_are_one_line_errors(tmp_path):
    class Big(TinyNet):
        def embed(self, x):
            return super().embed(x) * 1e6

    data = colour_dataset(10, seed=0)
    with pytest.raises(DataError, match="beyond float16's range.*float32") as err:
        extract_features(Big(0), data, cache_dir=tmp_path)
    assert "\n" not in str(err.value) and not list(tmp_path.glob("*/*"))
    assert extract_features(Big(0), data, cache_dir=tmp_path, cache_dtype="float32")["backbone"].abs().max() > 1e5


def test_a_second_process_waits_for_the_entry_and_reads_it(tmp_path, caplog):
    """While another process holds the entry's lock, extraction waits (one warning line) and
    then reads that process's complete entry instead of writing into it."""
    import fcntl
    import threading

    data = colour_dataset(10, seed=0)
    first = extract_features(TinyNet(0), data, cache_dir=tmp_path)
    (lock,) = tmp_path.glob("*.lock")
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # "another process" is extracting
    box = {}
    t = threading.Thread(target=lambda: box.update(fs=extract_features(TinyNet(0), data, cache_dir=tmp_path)))
    with caplog.at_level(logging.WARNING, logger="e2mc.evaluation.features"):
        t.start()
        t.join(timeout=3)
        assert t.is_alive() and "fs" not in box  # waiting
        os.close(fd)  # the other process ends (or dies): its lock goes
        t.join(timeout=60)
    assert box["fs"].meta["cached"] and torch.equal(box["fs"]["backbone"], first["backbone"])
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "another process is extracting" in msg


def _blobs(n_per_class, c=5, d=32, seed=0, noise=3.0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=torch.Generator().manual_seed(99))
    y = torch.arange(c).repeat_interleave(n_per_class)
    return centers[y] + noise * torch.randn(len(y), d, generator=g), y


def test_protocols_name_nan_rows_and_too_small_classes():
    x, y = _blobs(20)
    x[[3, 17], 0] = float("nan")
    with pytest.raises(DataError, match=r"^kNN train features: 2 of 100 rows contain NaN/inf") as err:
        knn_classify(x, y, x[20:], y[20:], ks=(5,))
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match=r"^linear probe train features: 2 of 100 rows contain NaN/inf"):
        linear_probe(x, y, x[20:], y[20:])
    x, y = _blobs(20)
    x, y = torch.cat([x, x[:1]]), torch.cat([y, torch.tensor([5])])  # class 5: one sample
    with pytest.raises(DataError, match=r"1 class\(es\) \(e.g. class 5\) have 1 training sample") as err:
        linear_probe(x, y, x, y, weight_decays=(1e-3,))
    assert "\n" not in str(err.value)


def test_knn_and_linear_on_fp16_features_match_float32():
    """fp16 storage (what the cache holds) changes accuracy by at most one test point here."""
    xtr, ytr = _blobs(80)
    xte, yte = _blobs(60, seed=1)
    h_tr, h_te = xtr.half(), xte.half()
    knn32 = knn_classify(xtr, ytr, xte, yte, ks=(5, 20))
    knn16 = knn_classify(h_tr, ytr, h_te, yte, ks=(5, 20))
    assert 0.5 < knn32[20] < 0.95  # a problem where rounding could matter
    for k in (5, 20):
        assert abs(knn16[k] - knn32[k]) <= 1 / 300
    for solver in ("lbfgs", "streaming"):
        kw = {
            "weight_decays": (1e-3, 1e-1),
            "solver": solver,
            "streaming": {"min_steps": 300} if solver == "streaming" else None,
        }
        a = linear_probe(xtr, ytr, xte, yte, **kw)
        b = linear_probe(h_tr, ytr, h_te, yte, **kw)
        assert 0.5 < a["top1"] < 0.99 and abs(a["top1"] - b["top1"]) <= 1 / 300, (solver, a["top1"], b["top1"])
