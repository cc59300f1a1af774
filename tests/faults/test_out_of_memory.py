"""Out of memory, as a user meets it: one line naming the batch size and what to lower, exit 2, no
traceback, nothing lost (the last checkpoint is the one written before, and ``--resume`` finishes
the run). The failures are the real exception types, raised inside the step by the real
allocators (a CPU allocation of 2**60 bytes) or as torch raises them on a GPU."""

import hashlib

import pytest
import torch

from e2mc.train.run import load_checkpoint

from .conftest import SETS, TINY, cli, one_line_error, same_weights, weights

CONTINUE = [a for o in TINY if not o.startswith("model.init=") for a in ("--set", o)]


def _cpu_allocator():
    torch.empty(1 << 60, dtype=torch.uint8)  # RuntimeError: DefaultCPUAllocator: can't allocate memory


def _cuda():
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")


def _python():
    raise MemoryError()


FAILURES = {"cpu_allocator": _cpu_allocator, "cuda": _cuda, "python": _python}


def _fail_at(monkeypatch, target, call, fail):
    """Make ``target`` (a class attribute or function "module:Name.attr") raise ``fail()`` at its ``call``-th call."""
    import importlib

    mod, _, attr = target.partition(":")
    owner_name, _, name = attr.rpartition(".")
    owner = importlib.import_module(mod)
    if owner_name:
        owner = getattr(owner, owner_name)
    real, count = getattr(owner, name), [0]

    def wrapped(*args, **kw):
        count[0] += 1
        if count[0] == call:
            fail()
        return real(*args, **kw)

    monkeypatch.setattr(owner, name, wrapped)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    out = tmp_path_factory.mktemp("start")
    code, _, err = cli("pretrain", *SETS, "--set", "train.epochs=1", "--out", out)
    assert code == 0, err
    return out / "checkpoints" / "last.pt"


@pytest.mark.parametrize("kind", FAILURES)
def test_out_of_memory_in_the_training_step_is_one_line_and_loses_nothing(tmp_path, monkeypatch, start, kind):
    run = tmp_path / "run"
    argv = ["continue", start, *CONTINUE, "--set", "train.epochs=2", "--out", run]
    # the views (where the traceback came from) fail at step 6: epoch 1 (4 steps) is saved
    _fail_at(monkeypatch, "e2mc.data.views:ViewGenerator.__call__", 6, FAILURES[kind])
    code, _, err = cli(*argv)
    line = one_line_error(
        code,
        err,
        "out of memory at batch size 32 (per process) in the training step",
        "--set optim.batch_size=16",
        "data.image_size",
        "train.precision=bf16",
        "(step 4) is intact",
    )
    last = run / "checkpoints" / "last.pt"
    assert str(last) in line
    assert load_checkpoint(last)["step"] == 4 and _sha(last) == _sha(run / "checkpoints" / "epoch_0001.pt")
    monkeypatch.undo()  # the memory is back: the run resumes (the lock was released) and finishes
    code, _, err = cli(*argv, "--resume")
    assert code == 0, err
    assert load_checkpoint(last)["step"] == 8
    assert same_weights(weights(run), weights(run, "epoch_0002.pt"))


def test_out_of_memory_in_the_label_free_metrics_names_them(tmp_path, monkeypatch, start):
    _fail_at(monkeypatch, "e2mc.train.monitor:ProbeMonitor.__call__", 1, _cpu_allocator)
    code, _, err = cli("continue", start, *CONTINUE, "--out", tmp_path / "run")
    one_line_error(code, err, "out of memory at batch size 32", "label-free metrics", "no checkpoint of this run")


@pytest.mark.parametrize("kind", FAILURES)
def test_out_of_memory_in_evaluate_names_the_batch_size_option(tmp_path, monkeypatch, start, kind):
    _fail_at(monkeypatch, "e2mc.evaluation.features:_forward", 1, FAILURES[kind])
    argv = ["evaluate", start, "--protocols", "knn", "--batch-size", "64", "--cache-dir", tmp_path / "cache"]
    code, _, err = cli(*argv)
    line = one_line_error(code, err, "out of memory at batch size 64", "--batch-size 32")
    assert "check that the images match" not in line


def test_out_of_memory_elsewhere_is_one_line_too(tmp_path, monkeypatch, start):
    """An allocation failure outside the steps that name their batch (here kNN's scoring)."""
    _fail_at(monkeypatch, "e2mc.evaluation.knn:knn_classify", 1, _cpu_allocator)
    code, _, err = cli("evaluate", start, "--protocols", "knn", "--no-cache")
    one_line_error(code, err, "out of memory", "--batch-size")
