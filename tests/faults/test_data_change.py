"""A resume notices training data that changed since its checkpoint (issue 28, item 1): it
refuses with one line naming the change, or, with --allow-data-change, recomputes the LR
schedule for the new data and says so. Older checkpoints (no fingerprint) resume with a note."""

import csv
import math
import shutil

import numpy as np
import torch
from PIL import Image

from e2mc.data.datasets import build_dataset
from e2mc.data.fingerprint import describe_change, fingerprint

from .conftest import cli, one_line_error


def _images(root, n, seed=0):
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(root / c / f"{c}{seed}_{i}.png")
    return root


def _args(data, run, cache):
    return [
        "--dataset", data, "--method", "vicreg", "--set", "model.init=random:resnet_mini:8-8-8",
        "--set", "model.head_sizes={projector: [16, 16]}", "--set", "data.image_size=8",
        "--set", f"data.cache_dir={cache}", "--batch-size", "4", "--set", "train.probe_size=0",
        "--set", "train.tensorboard=false", "--set", "optim.schedule=cosine", "--set", "train.log_every=1",
        "--epochs", "3", "--out", run,
    ]  # fmt: skip


def _stopped_after_epoch_1(run):
    """The finished run as it stood after its first epoch (a killed run to resume)."""
    ck = run / "checkpoints"
    shutil.copy(ck / "epoch_0001.pt", ck / "last.pt")
    for p in ck.glob("epoch_000[23].pt"):
        p.unlink()


def _lrs(run):
    return [float(r["lr"]) for r in csv.DictReader((run / "metrics.csv").open()) if r["phase"] == "train"]


def _stopped_run(tmp_path):
    """A 3-epoch cosine run on a folder of 2 x 8 images (4 steps an epoch), as it stood after its
    first epoch (a killed run to resume); and its uninterrupted learning rates."""
    torch.set_num_threads(1)
    data, run = _images(tmp_path / "data", 8), tmp_path / "run"
    code, _, err = cli("pretrain", *_args(data, run, tmp_path / "c"))
    assert code == 0, err
    full = _lrs(run)
    _stopped_after_epoch_1(run)
    return data, run, full


def test_images_added_refuse_then_allow(tmp_path):
    data, run, _ = _stopped_run(tmp_path)
    _images(data, 2, seed=1)  # 16 -> 20 images: 5 steps an epoch instead of 4
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    code, _, err = cli("pretrain", "--out", run, "--resume", "--set", f"data.cache_dir={tmp_path / 'c'}")
    one_line_error(code, err, "train data changed since the checkpoint: 16 -> 20 images", "--allow-data-change")
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before  # nothing touched

    code, out, err = cli(
        "pretrain", "--out", run, "--resume", "--allow-data-change", "--set", f"data.cache_dir={tmp_path / 'c'}"
    )
    assert code == 0, err
    assert "16 -> 20 images (--allow-data-change): LR schedule recomputed for 14 steps (the checkpoint's was 12)" in (
        out + err
    )
    lrs = _lrs(run)
    assert len(lrs) == 4 + 5 + 5  # epoch 0 at 4 steps, then 2 epochs at 5
    # the logged LR of step k: peak * (1 + cos(pi * (k - w) / (T - w))) / 2 for the NEW data's schedule:
    # T = 14 steps, warm-up w = round(10% of 3 epochs x 5 steps) = 2; 0 at the run's real end
    peak = lrs[0]
    want = [peak * 0.5 * (1 + math.cos(math.pi * (k - 2) / 12)) for k in range(5, 15)]
    np.testing.assert_allclose(lrs[4:], want, atol=1e-6)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["data_fingerprint"]["n"] == 20 and state["config"]["train"]["allow_data_change"] is False
    _stopped_after_epoch_1(run)  # the permission was used once: the same change is refused again
    code, _, err = cli("pretrain", "--out", run, "--resume", "--set", f"data.cache_dir={tmp_path / 'c'}")
    one_line_error(code, err, "16 -> 20 images")


def test_same_count_other_pixels_and_moved_folder(tmp_path):
    a = _images(tmp_path / "a", 3)
    fa = fingerprint(build_dataset(str(a), image_size=8, cache_dir=str(tmp_path / "c")))
    shutil.move(a, tmp_path / "moved")  # the same images elsewhere: the same data
    fm = fingerprint(build_dataset(str(tmp_path / "moved"), image_size=8, cache_dir=str(tmp_path / "c")))
    assert describe_change(fa, fm) is None
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "moved" / "a" / "a0_0.png")  # replaced
    fr = fingerprint(build_dataset(str(tmp_path / "moved"), image_size=8, cache_dir=str(tmp_path / "c")))
    assert describe_change(fa, fr) == "same number of images (6) but different pixels or labels"
    assert describe_change(
        {"n": 120, "kind": "pixels", "digest": "x"}, {"n": 140, "kind": "pixels", "digest": "y"}
    ) == ("120 -> 140 images")


def test_checkpoint_without_fingerprint_resumes_with_a_note(tmp_path):
    data, run, full = _stopped_run(tmp_path)
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    del state["data_fingerprint"]  # as e2mc wrote it before fingerprints
    torch.save(state, last)
    code, out, err = cli("pretrain", "--out", run, "--resume", "--set", f"data.cache_dir={tmp_path / 'c'}")
    assert code == 0, err
    assert "predates training-data fingerprints" in out + err
    assert _lrs(run) == full  # resumed as before


def test_streaming_folder_fingerprint(tmp_path):
    from e2mc.data.folder import StreamingImageFolder, scan_folder

    def fp(root):
        scan = scan_folder(str(root))
        return fingerprint(StreamingImageFolder(zip(scan.paths, scan.targets), scan.classes, 8))

    a = _images(tmp_path / "a", 3)
    first = fp(a)
    assert first["kind"] == "files" and first["n"] == 6
    shutil.move(a, tmp_path / "moved")
    assert describe_change(first, fp(tmp_path / "moved")) is None  # names, sizes, labels: not the location
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "moved" / "b" / "b0_1.png")  # another size
    assert describe_change(first, fp(tmp_path / "moved")) == "same number of images (6) but different files"
