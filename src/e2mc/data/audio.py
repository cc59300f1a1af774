"""Audio folders: recordings (wav, flac, ogg/opus, mp3, aiff through soundfile) as fixed-length float segments.

``audio_folder(root, split, opts, on_error="raise", info_cls=DatasetInfo) -> AudioDataset``; ``opts`` is the
run config's ``data.audio`` (``e2mc.config.AudioConfig``: sample_rate, segment_seconds,
crop_seconds, min_rms). Layout as for images: ``<root>/<split>/<class>/*`` or ``<root>/<class>/*``
(class indices from the sorted class folders of ``train``; nested folders inside a class are
read too); files directly in the folder, without class folders, get label -1.

Each file is read, mixed down to mono (mean of the channels), resampled to ``sample_rate``
(``scipy.signal.resample_poly``, the exact rational ratio) and cut into segments of
``segment_seconds``; a last piece of at least ``crop_seconds`` is a shorter segment of its own.
Counted skips (``dataset.skipped``: ``(path, reason)``, one warning line with the counts): a clip
shorter than the crop, a silent clip or segment (RMS below ``min_rms``), and with
``on_error="skip"`` a file soundfile cannot decode (with ``"raise"``: one-line ``DataError``).

Items: ``(float32 (S,), label)``, the segment zero-padded to S = segment samples (what evaluation
and the label-free probes read); ``with_transform(t)`` gives a copy whose items are
``(t(valid samples of the segment), label)`` (the training loader's crops, ``AudioCrops``).
The padded segments are ``dataset.images`` (N, S) and their valid lengths ``dataset.lengths``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from math import gcd

import numpy as np
import torch
from torch.utils.data import Dataset

from e2mc.errors import DataError

log = logging.getLogger(__name__)
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aif", ".aiff")  # what libsndfile reads
UNREAD_EXTENSIONS = (".m4a", ".aac", ".wma", ".amr", ".webm")  # recordings libsndfile cannot read
FORMATS = "/".join(e[1:] for e in AUDIO_EXTENSIONS)


def _is_audio(name: str, extensions: tuple = AUDIO_EXTENSIONS) -> bool:
    return name.lower().endswith(extensions) and not name.startswith(".")


def _audio_files(directory: str, extensions: tuple = AUDIO_EXTENSIONS) -> list[str]:
    out = []
    for here, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.join(here, f) for f in sorted(files) if _is_audio(f, extensions)]
    return out


def is_audio_folder(root: str) -> bool:
    """True when the folder (or its ``train`` split) holds recordings (of a format soundfile reads,
    or one it does not: the audio reader then says what to convert)."""
    base = os.path.join(root, "train") if os.path.isdir(os.path.join(root, "train")) else root
    return os.path.isdir(base) and bool(_audio_files(base, AUDIO_EXTENSIONS + UNREAD_EXTENSIONS))


def _unread(paths: list[str]) -> str:
    """``".m4a: 3, .aac: 1"`` of recordings in formats soundfile cannot read."""
    counts: dict[str, int] = {}
    for p in paths:
        ext = os.path.splitext(p)[1].lower()
        counts[ext] = counts.get(ext, 0) + 1
    return ", ".join(f"{e}: {n}" for e, n in sorted(counts.items()))


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """``x`` resampled from ``rate_in`` to ``rate_out`` Hz (polyphase, exact rational ratio)."""
    if rate_in == rate_out:
        return x.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = gcd(int(rate_in), int(rate_out))
    return resample_poly(x, rate_out // g, rate_in // g).astype(np.float32)


def read_audio(path: str, rate: int) -> np.ndarray:
    """Mono float32 samples of ``path`` at ``rate`` Hz; DataError when soundfile cannot decode it."""
    import soundfile as sf

    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - soundfile raises LibsndfileError/RuntimeError/TypeError
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        if path.lower().endswith(".mp3") and "MP3" not in sf.available_formats():
            raise DataError(
                f"cannot decode {path}: this soundfile's libsndfile ({sf.__libsndfile_version__}) reads no mp3; "
                "pip install -U soundfile (its wheels bundle libsndfile 1.1 or later, which does), or convert to flac"
            ) from None
        raise DataError(
            f"cannot decode {path} ({first}); re-export it as wav or flac, remove it, or set data.on_error=skip"
        ) from None
    return resample(data.mean(axis=1), sr, rate)


def segment_bounds(n: int, seg: int, crop: int) -> list[tuple[int, int]]:
    """``(start, length)`` of the segments of ``n`` samples: whole segments, then a last piece of
    at least ``crop`` samples; none when ``n < crop``."""
    out = [(s, seg) for s in range(0, n - seg + 1, seg)]
    rest = n - len(out) * seg
    if rest >= crop:
        out.append((len(out) * seg, rest))
    return out


class AudioDataset(Dataset):
    """Fixed-length float segments of recordings; see the module docstring."""

    def __init__(self, images, lengths, targets, classes, info, skipped=None, transform=None):
        self.images, self.lengths = images, lengths
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self.info = info
        self.skipped = list(skipped or [])
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        if self.transform is None:
            return self.images[index], self.targets[index]
        return self.transform(self.images[index, : int(self.lengths[index])]), self.targets[index]

    def with_transform(self, transform) -> "AudioDataset":
        """A copy (sharing the samples) whose items are ``(transform(valid samples), label)``."""
        out = copy.copy(self)
        out.transform = transform
        return out

    def subset(self, indices) -> "AudioDataset":
        """A new dataset with the segments ``indices``."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        info = dataclasses.replace(self.info, num_samples=len(idx))
        t = [self.targets[i] for i in idx.tolist()]
        return AudioDataset(self.images[idx], self.lengths[idx], t, self.classes, info, self.skipped, self.transform)


def _scan(root: str, split: str) -> tuple[list[str], list[tuple[str, int]]]:
    train = os.path.join(root, "train")
    has_splits = os.path.isdir(train)
    base = os.path.join(root, split) if has_splits else root
    if not os.path.isdir(base) or (not has_splits and split != "train"):
        raise DataError(
            f"{root} has no {split!r} split (no {split}/ folder): add it (its recordings in class folders, held out "
            "from training for a test split), or name another split (e2mc evaluate/compare: --test-split NAME; "
            "training: --set data.split=NAME)"
        )
    class_root = train if has_splits else root
    classes = sorted(d for d in os.listdir(class_root) if os.path.isdir(os.path.join(class_root, d)) and d[0] != ".")
    if has_splits and split != "train":
        other = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)) and d not in classes)
        if other:
            raise DataError(f"{base} has class folders {other[:4]} that train/ lacks; add them to train/")
    files = [(os.path.join(base, f), -1) for f in sorted(os.listdir(base)) if _is_audio(f)]
    for i, c in enumerate(classes):
        files += [(p, i) for p in _audio_files(os.path.join(base, c))]
    unread = [os.path.join(base, f) for f in os.listdir(base) if _is_audio(f, UNREAD_EXTENSIONS)]
    unread += [p for c in classes for p in _audio_files(os.path.join(base, c), UNREAD_EXTENSIONS)]
    convert = (
        f"recordings in formats soundfile cannot read ({_unread(unread)}): convert them to flac or wav "
        "(e.g. ffmpeg -i call.m4a call.flac)"
    )
    if not files:
        raise DataError(f"no audio files ({FORMATS}) in {base}" + (f"; it holds {convert}" if unread else ""))
    if unread:
        log.warning("%s: left out %d %s", base, len(unread), convert)
    return classes, files


def audio_folder(root: str, split: str, opts, on_error: str = "raise", *, info_cls) -> AudioDataset:
    """Read an audio folder into an :class:`AudioDataset` (see the module docstring); ``info_cls``:
    ``datasets.DatasetInfo`` (``build_dataset`` passes it and applies ``limit``)."""
    if opts is None:
        raise DataError(
            f"{root} is an audio folder, read with data.audio's options: train on it with `e2mc continue`/"
            "`pretrain`, evaluate with `e2mc evaluate`/`compare`, or from Python build_dataset(..., "
            "audio=e2mc.config.AudioConfig()); this command (e2mc tune) reads image folders only, so far"
        )
    rate = int(opts.sample_rate)
    seg, crop = round(opts.segment_seconds * rate), round(opts.crop_seconds * rate)
    if crop > seg:
        raise DataError(
            f"data.audio.crop_seconds={opts.crop_seconds} is longer than segment_seconds={opts.segment_seconds}; "
            "lower the crop or raise the segment"
        )
    classes, files = _scan(root, split)
    rows, lengths, targets, skipped = [], [], [], []
    for path, label in files:
        try:
            x = read_audio(path, rate)
        except DataError as exc:
            if on_error == "raise":
                raise
            skipped.append((path, str(exc)))
            continue
        bounds = segment_bounds(len(x), seg, crop)
        if not bounds:
            skipped.append((path, f"shorter than the crop ({len(x) / rate:.3g} s < {opts.crop_seconds} s)"))
            continue
        kept = 0
        for start, n in bounds:
            piece = x[start : start + n]
            if float(np.sqrt(np.mean(piece.astype(np.float64) ** 2))) < opts.min_rms:
                continue
            row = np.zeros(seg, dtype=np.float32)
            row[:n] = piece
            rows.append(row)
            lengths.append(n)
            targets.append(label)
            kept += 1
        if not kept:
            skipped.append((path, f"silent (RMS below data.audio.min_rms={opts.min_rms})"))
    if skipped:
        reasons: dict[str, int] = {}
        for _, why in skipped:
            key = why.split(" (")[0] if not why.startswith("cannot decode") else "cannot decode"
            reasons[key] = reasons.get(key, 0) + 1
        log.warning("%s (%s split): skipped %d of %d files (%s)", root, split, len(skipped), len(files), reasons)
    if not rows:
        raise DataError(
            f"no usable audio in {root} ({len(skipped)} files skipped, e.g. {skipped[0][0]}: {skipped[0][1]}); "
            "lower data.audio.crop_seconds or data.audio.min_rms, or check the files"
        )
    info = info_cls(
        name=os.path.basename(os.path.normpath(root)),
        split=split,
        num_classes=len(classes),
        image_size=seg,
        mean=(0.0,),
        std=(1.0,),
        num_samples=len(rows),
        modality="audio",
        sample_rate=rate,
    )
    return AudioDataset(torch.from_numpy(np.stack(rows)), torch.tensor(lengths), targets, classes, info, skipped)
