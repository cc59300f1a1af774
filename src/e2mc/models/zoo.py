"""Published models by name: the official releases e2mc knows, one table (:data:`ZOO`).

Every row was copied from its official repository's README (the commit read is in ``SOURCES``):
URL, architecture, published parameter count. None of the READMEs publishes a file size or a
hash, so ``size`` and ``sha256`` are ``None`` here (the download still checks the server's own
length, and the sha256 of what was loaded is recorded in the load report); a row that gets them
has them checked. A method added later adds rows here and nothing else.

Names are ``<method>:<name>`` (``vicreg:resnet50-full``). :func:`fetch` puts the file in torch
hub's cache, ``<torch hub dir>/checkpoints/<file>`` (``TORCH_HOME``; a file a user already
downloaded with ``torch.hub`` is found there), with :func:`e2mc.models.download.download`.
``E2MC_ZOO_URL_BASE`` replaces the URLs' ``https://<host>`` (a mirror, or the tests' local server).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from e2mc.errors import CheckpointError

SOURCES = {
    "vicreg": "facebookresearch/vicreg README, commit 4e12602 (2022-12-04)",
    "swav": "facebookresearch/swav README, commit 06b1b7c (2021-09-21)",
    "simsiam": "facebookresearch/simsiam README, commit a7bc177 (2021-06-19)",
    "dino": "facebookresearch/dino README, commit 7c446df (2023-04-18)",
}


@dataclass(frozen=True)
class Release:
    """One published file. ``layout``: its adapter in ``e2mc.models.adapters.ADAPTERS``;
    ``heads``: the file holds the method's heads (else a backbone alone); ``file``: the cache
    file name where the URL's own is ambiguous; ``unsupported``: why e2mc cannot load it (listed
    for reference; refused before any download)."""

    name: str
    method: str
    arch: str
    layout: str
    heads: bool
    url: str
    params: str | None = None  # as published (README), e.g. "23M"
    details: str = ""
    size: int | None = None  # bytes; not published for any row yet
    sha256: str | None = None  # not published for any row yet
    file: str | None = None
    unsupported: str | None = None

    @property
    def file_name(self) -> str:
        return self.file or os.path.basename(urlsplit(self.url).path)


_FB = "https://dl.fbaipublicfiles.com"
_WIDE = "VICReg's own widened ResNets, which e2mc.models.backbones does not build"


def _vicreg(arch: str, params: str, top1: str, supported: bool = True) -> list[Release]:
    why = None if supported else _WIDE
    kw = dict(method="vicreg", arch=arch, params=params, details=f"ImageNet linear top-1 {top1}", unsupported=why)
    return [
        Release(f"vicreg:{arch}", layout="torchvision", heads=False, url=f"{_FB}/vicreg/{arch}.pth", **kw),
        Release(f"vicreg:{arch}-full", layout="vicreg", heads=True, url=f"{_FB}/vicreg/{arch}_fullckpt.pth", **kw),
    ]


def _swav(tag: str, epochs: int, batch: int, crops: str, top1: str) -> Release:
    return Release(
        f"swav:resnet50-{tag.replace('_', '-')}",
        method="swav",
        arch="resnet50",
        layout="swav",
        heads=True,
        url=f"{_FB}/deepcluster/swav_{tag}_pretrain.pth.tar",
        details=f"{epochs} epochs, batch {batch}, crops {crops}, ImageNet linear top-1 {top1}",
    )


def _simsiam(folder: str, batch: int, top1: str) -> Release:
    return Release(
        f"simsiam:resnet50-bs{batch}",
        method="simsiam",
        arch="resnet50",
        layout="simsiam",
        heads=True,
        url=f"{_FB}/simsiam/models/{folder}/pretrain/checkpoint_0099.pth.tar",
        details=f"100 epochs, batch {batch}, ImageNet linear top-1 {top1}",
        file=f"simsiam_{folder}_checkpoint_0099.pth.tar",  # both releases are named checkpoint_0099.pth.tar
    )


def _dino(tag: str, folder: str, arch: str, params: str, knn: str, top1: str, why=None) -> list[Release]:
    """A DINO release: the teacher's backbone (``*_pretrain.pth``: timm / torchvision keys) and
    main_dino.py's full checkpoint (student, teacher, optimiser, centre)."""
    kw = dict(method="dino", arch=arch, params=params, details=f"ImageNet k-NN {knn}, linear top-1 {top1}")
    kw["unsupported"] = why
    backbone = "torchvision" if arch.startswith("resnet") else "timm"
    base = f"{_FB}/dino/dino_{folder}_pretrain/dino_{folder}_pretrain"
    return [
        Release(f"dino:{tag}", layout=backbone, heads=False, url=f"{base}.pth", **kw),
        Release(f"dino:{tag}-full", layout="dino", heads=True, url=f"{base}_full_checkpoint.pth", **kw),
    ]


_XCIT = "XCiT (facebookresearch/xcit), which e2mc.models.backbones does not build"

ZOO: dict[str, Release] = {
    r.name: r
    for r in [
        *_vicreg("resnet50", "23M", "73.2%"),
        *_vicreg("resnet50x2", "93M", "75.5%", supported=False),
        *_vicreg("resnet200x2", "250M", "77.3%", supported=False),
        _swav("800ep", 800, 4096, "2x224 + 6x96", "75.3"),
        _swav("400ep", 400, 4096, "2x224 + 6x96", "74.6"),
        _swav("200ep", 200, 4096, "2x224 + 6x96", "73.9"),
        _swav("100ep", 100, 4096, "2x224 + 6x96", "72.1"),
        _swav("200ep_bs256", 200, 256, "2x224 + 6x96", "72.7"),
        _swav("400ep_bs256", 400, 256, "2x224 + 6x96", "74.3"),
        _swav("400ep_2x224", 400, 4096, "2x224", "70.1"),
        _simsiam("100ep", 512, "68.1"),
        _simsiam("100ep-256bs", 256, "68.3"),
        *_dino("vit-small16", "deitsmall16", "timm:vit_small_patch16_224", "21M", "74.5%", "77.0%"),
        *_dino("vit-small8", "deitsmall8", "timm:vit_small_patch8_224", "21M", "78.3%", "79.7%"),
        *_dino("vit-base16", "vitbase16", "timm:vit_base_patch16_224", "85M", "76.1%", "78.2%"),
        *_dino("vit-base8", "vitbase8", "timm:vit_base_patch8_224", "85M", "77.4%", "80.1%"),
        *_dino("resnet50", "resnet50", "resnet50", "23M", "67.5%", "75.3%"),
        *_dino("xcit-small-12-p16", "xcit_small_12_p16", "xcit:small_12_p16", "26M", "76.0%", "77.8%", _XCIT),
        *_dino("xcit-small-12-p8", "xcit_small_12_p8", "xcit:small_12_p8", "26M", "77.1%", "79.2%", _XCIT),
        *_dino("xcit-medium-24-p16", "xcit_medium_24_p16", "xcit:medium_24_p16", "84M", "76.4%", "78.8%", _XCIT),
        *_dino("xcit-medium-24-p8", "xcit_medium_24_p8", "xcit:medium_24_p8", "84M", "77.9%", "80.3%", _XCIT),
    ]
}
METHOD_PREFIXES = tuple(sorted({r.method + ":" for r in ZOO.values()}))


def is_zoo_name(text: str) -> bool:
    """True for a ``<method>:<name>`` string (known or not) that is not an existing path."""
    return text.startswith(METHOD_PREFIXES) and not os.path.exists(text)


def get(name: str) -> Release:
    """The row of ``name``; CheckpointError listing the close names otherwise."""
    if name in ZOO:
        return ZOO[name]
    close = difflib.get_close_matches(name, list(ZOO), n=4, cutoff=0.5)
    hint = f"close names: {', '.join(close)}" if close else f"known: {', '.join(ZOO)}"
    raise CheckpointError(f"{name!r} is not in e2mc's model zoo ({hint}); `e2mc zoo` lists them all")


def url_of(row: Release) -> str:
    """The row's URL, on ``$E2MC_ZOO_URL_BASE`` when that is set."""
    base = os.environ.get("E2MC_ZOO_URL_BASE")
    if not base:
        return row.url
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CheckpointError(
            f"E2MC_ZOO_URL_BASE={base!r} is not an http(s) address; set it to a mirror such as "
            "https://example.org (the files' paths are appended), or unset it to use the official URLs"
        )
    return base.rstrip("/") + urlsplit(row.url).path


def cache_path(row: Release) -> Path:
    """``<torch hub dir>/checkpoints/<file>``: where torch.hub itself keeps downloads."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / row.file_name


def fetch(name: str, progress: bool = True) -> tuple[Path, dict]:
    """The local file of ``name`` (downloaded into the cache when absent) and its provenance
    ``{"name", "url", "cache_path", "sha256", "size"}``."""
    from e2mc.models.download import check_file, download

    row = get(name)
    if row.unsupported:
        raise CheckpointError(
            f"{name} is listed for reference only ({row.arch} is one of {row.unsupported}); nothing downloaded. "
            "Load a supported name from `e2mc zoo`, or a file whose arch e2mc builds"
        )
    url, path = url_of(row), cache_path(row)
    if path.is_file():
        digest = check_file(path, url, row.size, row.sha256)
    else:
        digest = download(url, path, size=row.size, sha256=row.sha256, progress=progress)
    source = {"name": name, "url": url, "cache_path": str(path), "sha256": digest, "size": path.stat().st_size}
    return path, source


def table() -> list[dict]:
    """The zoo as rows of strings (what ``e2mc zoo`` prints)."""
    return [
        {
            "name": r.name,
            "method": r.method,
            "arch": r.arch,
            "layout": r.layout,
            "heads": "yes" if r.heads else "no",
            "params": r.params or "not published",
            "size": f"{r.size:,} B" if r.size else "not published",
            "sha256": r.sha256 or "not published",
            "details": r.details,
            "url": r.url,
            "file": r.file_name,
            "cached": str(cache_path(r)) if cache_path(r).is_file() else "",
            "loadable": "no: " + r.unsupported if r.unsupported else "yes",
        }
        for r in ZOO.values()
    ]
