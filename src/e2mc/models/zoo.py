"""Published models by name: the official releases e2mc knows, one table (:data:`ZOO`).

Each method file lists its releases (``Method.releases``, :class:`~e2mc.methods.release.Release`
rows) copied from its official repository's README (the commit read is its
``releases_source``, collected in ``SOURCES``): URL, architecture, published parameter count.
None of the READMEs publishes a file size or a hash, so ``size`` and ``sha256`` are ``None`` (the
download still checks the server's own length, and the sha256 of what was loaded is recorded in
the load report); a row that gets them has them checked. A method added later adds rows in its
own file and nothing here.

Names are ``<method>:<name>`` (``vicreg:resnet50-full``). :func:`fetch` puts the file in torch
hub's cache, ``<torch hub dir>/checkpoints/<file>`` (``TORCH_HOME``; a file a user already
downloaded with ``torch.hub`` is found there), with :func:`e2mc.models.download.download`.
``E2MC_ZOO_URL_BASE`` replaces the URLs' ``https://<host>`` (a mirror, or the tests' local server).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from urllib.parse import urlsplit

from e2mc.errors import CheckpointError
from e2mc.methods import METHODS
from e2mc.methods.release import Release

SOURCES = {name: m.releases_source for name, m in METHODS.items() if m.releases}
ZOO: dict[str, Release] = {r.name: r for m in METHODS.values() for r in m.releases}
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
            f"{name} is listed for reference only ({row.unsupported}); nothing downloaded. "
            "Load a supported name from `e2mc zoo`, or a file you hold by its path"
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
