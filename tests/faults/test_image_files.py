"""Image folders as users have them: symlink loops, 16-bit PNGs, animated GIFs and file names
that are not valid UTF-8 give the right images (or a one-line error), never wrong counts or
black classes in silence (issue 28, items 3, 4 and 7)."""

import logging
import os
import struct
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from e2mc.data.datasets import build_dataset
from e2mc.data.folder import cache_key, decode_one, scan_folder

from .conftest import cli


def _rgb(path, rng, size=12):
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _classes(root, n=10, names=("a", "b")):
    rng = np.random.default_rng(0)
    for c in names:
        (root / c).mkdir(parents=True)
        for i in range(n):
            _rgb(root / c / f"{c}{i}.png", rng)
    return root


def _png16_rgb(path, pixels):
    """A 16-bit RGB PNG written from the PNG specification (zlib + CRC chunks), independent of
    PIL and torchvision: colour type 2, bit depth 16, big-endian samples, filter 0 per row."""
    h, w, _ = pixels.shape

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(h))
    head = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def _reference_8bit(v16):
    """The 8-bit value of a 16-bit sample: v * 255 / 65535, rounded (numpy, float64)."""
    return np.round(v16.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)


def test_symlink_loop_is_walked_once(tmp_path, caplog):
    root = _classes(tmp_path / "imgs")
    os.symlink(".", root / "a" / "loop")  # `ln -s . train/a/loop`
    os.symlink(root / "b", root / "a" / "b_again")  # a second link to a folder read elsewhere
    (tmp_path / "extra").mkdir()
    _rgb(tmp_path / "extra" / "x.png", np.random.default_rng(1))
    os.symlink(tmp_path / "extra", root / "b" / "more")  # a link to new images: followed
    with caplog.at_level(logging.WARNING, logger="e2mc.data.folder"):
        scan = scan_folder(str(root))
    counts = [scan.targets.count(i) for i in range(2)]
    assert counts == [10 + 11, 11]  # a/ reads b/ (and its linked extra/) once through its link, never itself again
    in_a = [os.path.realpath(p) for p, t in zip(scan.paths, scan.targets) if t == 0]
    assert len(in_a) == len(set(in_a))
    msgs = [r.getMessage() for r in caplog.records]
    assert any("skipped 1 linked folder" in m and "loop" in m for m in msgs), msgs


def test_16bit_png_scaled_to_8_bits(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 65536, (12, 12), dtype=np.uint16)
    gray[0, :4] = [0, 128, 65535, 32896]  # edges and a value on a rounding boundary
    Image.fromarray(gray).save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode == "I;16"
    img = decode_one(str(tmp_path / "g.png")).numpy()
    for ch in img:
        np.testing.assert_array_equal(ch, _reference_8bit(gray))
    rgb = rng.integers(0, 65536, (9, 7, 3), dtype=np.uint16)
    rgb[0, 0] = [65535, 0, 257]
    _png16_rgb(tmp_path / "rgb16.png", rgb)
    np.testing.assert_array_equal(
        decode_one(str(tmp_path / "rgb16.png")).permute(1, 2, 0).numpy(), _reference_8bit(rgb)
    )


def test_16bit_class_is_not_black(tmp_path):
    root = _classes(tmp_path / "imgs", names=("a",))
    (root / "dark16").mkdir()
    rng = np.random.default_rng(2)
    for i in range(10):  # bright 16-bit images: cut to their low byte they would be near-random/black
        Image.fromarray(rng.integers(60000, 65536, (12, 12), dtype=np.uint16)).save(root / "dark16" / f"{i}.png")
    ds = build_dataset(str(root), image_size=12, cache_dir=str(tmp_path / "cache"))
    sixteen = ds.images[[t == 1 for t in ds.targets]].float()
    assert sixteen.shape[0] == 10 and sixteen.min() >= 233  # 60000 / 257 = 233.5


def test_animated_gif_gives_its_first_frame(tmp_path):
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).convert("P") for _ in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    img = decode_one(str(tmp_path / "anim.gif"))
    assert tuple(img.shape) == (3, 12, 12)
    first = np.array(Image.open(tmp_path / "anim.gif").convert("RGB"))  # PIL opens at frame 0
    np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(), first)


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse names that are not UTF-8")
def test_undecodable_file_name(tmp_path):
    root = _classes(tmp_path / "imgs", n=4)
    name = os.fsencode(root / "a") + b"/caf\xe9.png"  # Latin-1 bytes: not valid UTF-8
    with open(name, "wb") as fh:
        fh.write((root / "a" / "a0.png").read_bytes())
    scan = scan_folder(str(root))
    odd = [p for p in scan.paths if os.fsencode(p) == name]
    assert len(odd) == 1
    key = cache_key({"x": 1}, scan.paths)  # UnicodeEncodeError before
    assert key == cache_key({"x": 1}, list(scan.paths))
    ds = build_dataset(str(root), image_size=12, cache_dir=str(tmp_path / "cache"), on_error="raise")
    assert len(ds) == 9
    row = scan.paths.index(odd[0])
    assert (ds.images[row] == ds.images[scan.paths.index(str(root / "a" / "a0.png"))]).all()


def test_folder_of_all_of_them_trains(tmp_path):
    """The CLI on a folder with a loop, a GIF, a 16-bit PNG and an odd name: exit 0, right count."""
    root = _classes(tmp_path / "imgs", n=6)
    os.symlink(".", root / "a" / "loop")
    rng = np.random.default_rng(3)
    frames = [Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).convert("P") for _ in range(2)]
    frames[0].save(root / "b" / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(rng.integers(0, 65536, (12, 12), dtype=np.uint16)).save(root / "b" / "g16.png")
    if sys.platform != "darwin":
        with open(os.fsencode(root / "b") + b"/\xff.png", "wb") as fh:
            fh.write((root / "b" / "b0.png").read_bytes())
    code, out, err = cli(
        "pretrain", "--dataset", root, "--method", "vicreg",
        "--set", "model.init=random:resnet_mini:8-8-8", "--set", "model.head_sizes={projector: [16, 16]}",
        "--set", "data.image_size=8", "--set", "data.on_error=raise", "--set", f"data.cache_dir={tmp_path / 'c'}",
        "--batch-size", "5", "--set", "train.probe_size=0", "--set", "train.tensorboard=false",
        "--set", "train.max_steps=1", "--out", tmp_path / "run",
    )  # fmt: skip
    assert code == 0 and "Traceback" not in err, err
    n = 6 + 6 + 2 + (sys.platform != "darwin")
    import torch

    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["data_fingerprint"]["n"] == n  # every image once, none skipped
