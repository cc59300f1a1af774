"""One published file of a method (:class:`Release`): a method file lists its official releases
(``Method.releases``) and ``e2mc.models.zoo.ZOO`` collects them from ``METHODS``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Release:
    """One published file. ``name``: ``<method>:<name>``; ``layout``: its adapter in
    ``e2mc.models.adapters.ADAPTERS``; ``heads``: the file holds the method's heads (else a
    backbone alone); ``file``: the cache file name where the URL's own is ambiguous;
    ``unsupported``: why e2mc cannot load it (listed for reference; refused before any download)."""

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
