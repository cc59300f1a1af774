"""Library weights by name: ``torchvision:<arch>`` through torch.hub, ``timm:<name>[.<tag>]``
through timm's own loader (Hugging Face hub or its URL; ``HF_HUB_OFFLINE`` honoured).

Both download into their library's cache (``<torch hub dir>/checkpoints`` / the Hugging Face cache)
and say where the file came from (``source``: name, url, cache_path, sha256) for the load report.
Weights that cannot be had are a one-line :class:`CheckpointError` naming the URL and where to
put a file fetched by hand.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from torch import nn

from e2mc.errors import CheckpointError, ConfigError
from e2mc.models.download import sha256_file


def _why(exc: Exception) -> str:
    text = str(getattr(exc, "reason", None) or exc).strip().splitlines()
    first = text[0].split(". ")[0].rstrip(".") if text else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def _source(name: str, url: str, path: Path | str | None) -> dict:
    path = Path(path) if path else None
    found = path is not None and path.is_file()
    return {
        "name": name,
        "url": url,
        "cache_path": str(path) if path else None,
        "sha256": sha256_file(path) if found else None,
        "size": path.stat().st_size if found else None,
    }


def torchvision_state_dict(arch: str) -> tuple[dict, dict]:
    """torchvision's DEFAULT weights of ``arch`` (``weights.get_state_dict``: torch.hub's cache,
    downloaded there with a progress bar when absent) and their source."""
    import torch.hub
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    try:  # torch.hub announces a download on stdout: keep stdout for results (inspect --json)
        with contextlib.redirect_stdout(sys.stderr):
            sd = weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except Exception as exc:  # offline, server down, 404, hash mismatch, truncated file
        if path.is_file():
            raise CheckpointError(
                f"cannot read torchvision's {weights} weights {path} ({_why(exc)}); delete it to download "
                f"it again from {weights.url}"
            ) from None
        raise CheckpointError(
            f"cannot get torchvision's {weights} weights ({_why(exc)}); download {weights.url} by other "
            f"means and place it at {path} (used as is), or use random:{arch} for random weights"
        ) from None
    return sd, _source(f"torchvision:{arch}", weights.url, path)


def _timm_files(cfg: dict) -> tuple[str, Path | None]:
    """(URL, cached file or its would-be path) of a timm pretrained config."""
    import torch.hub

    if cfg.get("hf_hub_id"):
        from huggingface_hub import constants, try_to_load_from_cache

        repo = cfg["hf_hub_id"]
        names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
        for fname in names:
            hit = try_to_load_from_cache(repo, fname)
            if isinstance(hit, str):
                return f"https://huggingface.co/{repo}/resolve/main/{fname}", Path(hit)
        folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
        return f"https://huggingface.co/{repo}/resolve/main/{names[0]}", folder
    url = cfg.get("url") or ""
    return url, (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)) if url else None


def timm_pretrained(name: str, **kw) -> tuple[nn.Module, dict]:
    """``timm.create_model(name, pretrained=True, num_classes=0, **kw)`` and its weights' source."""
    import timm

    try:  # timm may announce a download on stdout (URL weights): keep stdout for results
        with contextlib.redirect_stdout(sys.stderr), _quiet_hub_retries():
            net = timm.create_model(name, pretrained=True, num_classes=0, **kw)
    except TypeError as exc:
        raise ConfigError(f"timm model {name!r} does not accept {sorted(kw)}: {exc}") from None
    except Exception as exc:  # offline without the file cached, no such tag, server down
        cfg = _pretrained_cfg(name)
        if cfg is None:
            raise CheckpointError(
                f"timm has no pretrained weights for {name!r} ({_why(exc)}); see "
                f"timm.list_pretrained('{name.split('.')[0]}*') for its tags, or use random:timm:{name}"
            ) from None
        url, path = _timm_files(cfg)
        from huggingface_hub import constants

        why = _why(exc)
        if constants.HF_HUB_OFFLINE and cfg.get("hf_hub_id"):
            why = f"HF_HUB_OFFLINE=1 and they are not in the local cache {constants.HF_HUB_CACHE}"
        place = (
            f"where you are online, `hf download {cfg['hf_hub_id']}` fills a Hugging Face cache: copy its "
            f"models--{cfg['hf_hub_id'].replace('/', '--')} folder to {path}"
            if cfg.get("hf_hub_id")
            else f"place it at {path} (used as is)"
        )
        raise CheckpointError(
            f"cannot get timm's pretrained weights for {name} ({why}); the file is {url}: {place}; "
            f"or pass the downloaded file itself with --arch timm:{name} (arch='timm:{name}')"
        ) from None
    url, path = _timm_files(net.pretrained_cfg)
    return net, _source(f"timm:{name}", url, path)


@contextlib.contextmanager
def _quiet_hub_retries():
    """huggingface_hub logs each failed request as a warning line of its own ("'...' thrown while
    requesting HEAD ..."); a failure here ends in e2mc's one-line error, so only errors pass."""
    import logging

    log = logging.getLogger("huggingface_hub")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _pretrained_cfg(name: str) -> dict | None:
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:
        return None
    return cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else None
