"""Audio folders: mono mix-down, resampling, segments, counted skips and one-line errors; the views."""

import numpy as np
import pytest
import torch

from e2mc.config import AudioConfig
from e2mc.data import build_dataset, eval_transform, make_views, training_dataset
from e2mc.data.audio import read_audio, resample, segment_bounds
from e2mc.data.audioviews import AudioViews
from e2mc.errors import DataError

from .conftest import sf, tone


def test_folder_mono_resampled_segments(audio_dir):
    ds = build_dataset(str(audio_dir), audio=AudioConfig(segment_seconds=0.5, crop_seconds=0.25))
    # 1.2 s at 16 kHz = 19200 samples: two 8000-sample segments + a 3200-sample rest (< 4000 crop: dropped)
    assert ds.images.shape == (16, 8000) and ds.lengths.tolist() == [8000] * 16
    assert ds.classes == ["caller0", "caller1"] and ds.targets == [0] * 8 + [1] * 8
    assert ds.info.modality == "audio" and ds.info.sample_rate == 16000 and ds.info.image_size == 8000
    x = read_audio(str(audio_dir / "caller0" / "0.wav"), 16000)
    stereo = tone(1.2, 22050, 300, 2, seed=0)
    want = resample(stereo.mean(1), 22050, 16000)
    assert x.shape == (19200,) and np.allclose(x, want, atol=1e-4)  # mean of the channels, then resampled
    assert torch.equal(ds.images[0], torch.from_numpy(x[:8000]))


def test_resample_keeps_the_frequency():
    x = tone(1.0, 44100, 1000)[:, 0]
    y = resample(x, 44100, 16000)
    assert y.shape == (16000,) and y.dtype == np.float32
    peak = np.argmax(np.abs(np.fft.rfft(y))) * 16000 / len(y)
    assert abs(peak - 1000) <= 1


def test_segment_bounds():
    assert segment_bounds(10, 4, 3) == [(0, 4), (4, 4)]  # rest 2 < crop 3
    assert segment_bounds(11, 4, 3) == [(0, 4), (4, 4), (8, 3)]
    assert segment_bounds(2, 4, 3) == []


def test_skips_are_counted_and_errors_are_one_line(audio_dir, caplog):
    sf.write(audio_dir / "caller0" / "silent.wav", np.zeros((16000, 1), np.float32), 16000)
    sf.write(audio_dir / "caller1" / "short.flac", tone(0.1, 16000, 500), 16000)
    (audio_dir / "caller1" / "broken.ogg").write_bytes(b"OggS not really an ogg file")
    opts = AudioConfig(segment_seconds=1.0, crop_seconds=0.5)
    with pytest.raises(DataError) as err:
        build_dataset(str(audio_dir), audio=opts, on_error="raise")
    assert "broken.ogg" in str(err.value) and "\n" not in str(err.value) and "data.on_error=skip" in str(err.value)
    ds = build_dataset(str(audio_dir), audio=opts, on_error="skip")
    why = {p.rsplit("/", 1)[1]: r for p, r in ds.skipped}
    assert set(why) == {"silent.wav", "short.flac", "broken.ogg"}
    assert why["silent.wav"].startswith("silent") and why["short.flac"].startswith("shorter than the crop")
    assert len(ds) == 8 and "skipped 3 of 11 files" in caplog.text


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile neither writes nor reads mp3")
def test_mp3_and_opus_are_read_and_unreadable_formats_are_named(tmp_path, caplog):
    """Field recordings often come as mp3 (xeno-canto) or opus; libsndfile (1.1+) writes and reads
    both. Formats it cannot read (m4a) are not silently dropped: they are counted and named."""
    root = tmp_path / "calls"
    for c, (ext, fmt) in enumerate([(".mp3", "MP3"), (".opus", "OGG")]):
        (root / f"bird{c}").mkdir(parents=True)
        for i in range(2):
            x = tone(1.0, 48000, 400 + 300 * c + 50 * i, seed=i)
            sf.write(root / f"bird{c}" / f"{i}{ext}", x, 48000, format=fmt, subtype="OPUS" if ext == ".opus" else None)
    (root / "bird1" / "2.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A ")  # an AAC recording's first bytes
    ds = build_dataset(str(root), audio=AudioConfig(segment_seconds=0.5, crop_seconds=0.25))
    assert ds.targets == [0] * 4 + [1] * 4 and ds.skipped == []  # 1 s each: two 0.5 s segments
    x = read_audio(str(root / "bird0" / "0.mp3"), 16000)
    peak = np.argmax(np.abs(np.fft.rfft(x))) * 16000 / len(x)
    assert abs(peak - 400) <= 2 and abs(len(x) - 16000) <= 16000 * 0.1  # the tone, about its length
    assert "left out 1 recordings in formats soundfile cannot read (.m4a: 1)" in caplog.text
    only = tmp_path / "phone" / "a"
    only.mkdir(parents=True)
    (only / "0.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A ")
    with pytest.raises(DataError, match=r"no audio files \(wav/flac.*\) in .*holds recordings .*\.m4a: 1.*ffmpeg"):
        build_dataset(str(only.parent), audio=AudioConfig())  # an audio folder still: not an image-folder error


def test_bad_options_and_folders(audio_dir, tmp_path):
    with pytest.raises(DataError, match="longer than segment_seconds"):
        build_dataset(str(audio_dir), audio=AudioConfig(segment_seconds=0.5, crop_seconds=1.0))
    with pytest.raises(DataError, match="is an audio folder, read with data.audio"):
        build_dataset(str(audio_dir))
    with pytest.raises(DataError, match="no 'test' split.*--test-split NAME"):
        build_dataset(str(audio_dir), "test", audio=AudioConfig())
    quiet = tmp_path / "quiet" / "a"
    quiet.mkdir(parents=True)
    sf.write(quiet / "0.wav", np.zeros((32000, 1), np.float32), 16000)
    with pytest.raises(DataError, match="no usable audio .*0.wav: silent.*lower data.audio.crop_seconds"):
        build_dataset(str(quiet.parent), audio=AudioConfig())


def test_views_crops_gain_noise_mask(audio_dir):
    opts = AudioConfig(segment_seconds=0.5, crop_seconds=0.25)
    ds = build_dataset(str(audio_dir), audio=opts)
    views = make_views("vicreg", ds.info, None, "cpu", audio=opts)
    assert isinstance(views, AudioViews)
    train = training_dataset(ds, views)
    crops, label = train[3]
    assert len(crops) == 2 and all(c.shape == (4000,) for c in crops) and label == 0
    row = ds.images[3]
    assert all(any(torch.equal(c, row[s : s + 4000]) for s in range(4001)) for c in crops)  # cut from the segment
    batch = [torch.stack(v) for v in zip(*(train[i][0] for i in range(4)))]
    torch.manual_seed(0)
    plain = AudioViews(AudioConfig(segment_seconds=0.5, crop_seconds=0.25, gain_db=0, noise_p=0, mask_p=0))
    assert all(torch.equal(a, b) for a, b in zip(plain(batch), batch))  # every augmentation off: the crops
    masked = AudioViews(AudioConfig(segment_seconds=0.5, crop_seconds=0.25, gain_db=0, noise_p=0, mask_p=1))(batch)
    zero = (masked[0] == 0).sum(1)
    assert (zero >= 400).all() and torch.equal(masked[0][masked[0] != 0], batch[0][masked[0] != 0])
    gain = AudioViews(AudioConfig(segment_seconds=0.5, crop_seconds=0.25, gain_db=6, noise_p=0, mask_p=0))(batch)
    ratio = gain[0] / batch[0]
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4)  # one gain per clip
    assert ((ratio[:, 0] >= 10 ** (-6 / 20) - 1e-5) & (ratio[:, 0] <= 10 ** (6 / 20) + 1e-5)).all()
    noisy = AudioViews(
        AudioConfig(
            segment_seconds=0.5,
            crop_seconds=0.25,
            gain_db=0,
            noise_p=1,
            mask_p=0,
            noise_snr_min_db=10,
            noise_snr_max_db=10,
        )
    )(batch)
    added = noisy[0] - batch[0]
    snr = 20 * torch.log10(batch[0].pow(2).mean(1).sqrt() / added.pow(2).mean(1).sqrt())
    assert torch.allclose(snr, torch.full_like(snr, 10.0), atol=1e-3)
    assert torch.allclose(
        added / added.norm(dim=1, keepdim=True),
        batch[0].roll(1, 0) / batch[0].roll(1, 0).norm(dim=1, keepdim=True),
        atol=1e-5,
    )
    g = torch.Generator().manual_seed(3)
    a = views(batch, generator=g)
    b = views(batch, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(eval_transform(ds.images[:2], ds.info), ds.images[:2])
    with pytest.raises(DataError, match="audio views need"):
        views([batch[0][:, :100], batch[1][:, :100]])
