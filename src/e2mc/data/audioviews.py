"""Views of recordings for continued pre-training: random crops of one segment, then on the device
gain, additive noise from other clips and time masking (each in ``data.audio``, with defaults).

- ``AudioCrops(n_views, crop)``: DataLoader-worker transform, the valid samples of one segment
  (L,) -> ``n_views`` random crops of ``crop`` samples (independent uniform starts; the worker's
  torch RNG).
- ``AudioViews(opts, n_views=2, device="cpu")``; ``views(batch, generator=None)`` -> list of float
  (N, crop) waveforms. ``batch``: one batch per view already cropped (the loader's), or one
  (N, S) batch, cropped here (uniform starts over the whole row). Per view and sample: with
  probability ``noise_p`` another clip of the same view's batch (a cyclic shift of the batch) is
  added at an SNR uniform in [``noise_snr_min_db``, ``noise_snr_max_db``]; a gain uniform in
  ±``gain_db`` dB; with probability ``mask_p`` one span of ``mask_fraction`` x crop samples is
  zeroed. ``generator``: as ``ViewGenerator`` (a seed drawn from it, the global RNG untouched).
"""

from __future__ import annotations

import torch

from e2mc.errors import DataError


class AudioCrops:
    """Random crops of one segment, one per view (picklable, for loader workers)."""

    def __init__(self, n_views: int, crop: int):
        self.n_views, self.crop = int(n_views), int(crop)

    def __call__(self, wave: torch.Tensor) -> list[torch.Tensor]:
        n = wave.shape[-1]
        if n < self.crop:
            raise DataError(f"a segment of {n} samples is shorter than the crop of {self.crop}; rebuild the dataset")
        starts = torch.randint(0, n - self.crop + 1, (self.n_views,)).tolist()
        return [wave[s : s + self.crop] for s in starts]


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-8)


class AudioViews:
    """The audio views recipe; see the module docstring."""

    def __init__(self, opts, n_views: int = 2, device="cpu"):
        self.opts = opts
        self.n_views = int(n_views)
        self.crop = round(opts.crop_seconds * opts.sample_rate)
        self.device = torch.device(device)

    def loader_crops(self) -> AudioCrops:
        """The worker transform that cuts this recipe's crops."""
        return AudioCrops(self.n_views, self.crop)

    def __call__(self, batch, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        if generator is None:
            return self._views(batch)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return self._views(batch)

    def _crops(self, batch) -> list[torch.Tensor]:
        if isinstance(batch, (list, tuple)):
            if len(batch) != self.n_views or any(c.ndim != 2 or c.shape[1] != self.crop for c in batch):
                got = [tuple(c.shape) for c in batch]
                raise DataError(
                    f"the loader's crops have shapes {got}; the audio views need {self.n_views} x (N, {self.crop})"
                )
            return [c.to(self.device, non_blocking=True).float() for c in batch]
        if batch.ndim != 2 or batch.shape[1] < self.crop:
            raise DataError(f"audio views need waveforms (N, >= {self.crop} samples), got shape {tuple(batch.shape)}")
        x = batch.to(self.device, non_blocking=True).float()
        idx = torch.arange(self.crop, device=self.device)
        out = []
        for _ in range(self.n_views):
            starts = torch.randint(0, x.shape[1] - self.crop + 1, (x.shape[0], 1), device=self.device)
            out.append(x.gather(1, starts + idx))
        return out

    @torch.no_grad()
    def _views(self, batch) -> list[torch.Tensor]:
        o = self.opts
        out = []
        for x in self._crops(batch):
            n = x.shape[0]
            x = x.clone()
            if o.noise_p > 0 and n > 1:
                noise = x.roll(1, 0)
                snr = torch.empty(n, 1, device=x.device).uniform_(o.noise_snr_min_db, o.noise_snr_max_db)
                scale = _rms(x) / _rms(noise) * torch.pow(10.0, -snr / 20)
                use = (torch.rand(n, 1, device=x.device) < o.noise_p).float()
                x = x + use * scale * noise
            if o.gain_db > 0:
                x = x * torch.pow(10.0, torch.empty(n, 1, device=x.device).uniform_(-o.gain_db, o.gain_db) / 20)
            span = int(o.mask_fraction * self.crop)
            if o.mask_p > 0 and span > 0:
                start = torch.randint(0, self.crop - span + 1, (n, 1), device=x.device)
                t = torch.arange(self.crop, device=x.device)
                hit = (t >= start) & (t < start + span) & (torch.rand(n, 1, device=x.device) < o.mask_p)
                x = x.masked_fill(hit, 0.0)
            out.append(x)
        return out
