"""The one download e2mc does itself: a URL into a cache file, resumable, checked, atomic.

:func:`download` streams ``url`` into ``<dest>.part`` with a tqdm progress bar (on stderr). A cut
connection is resumed with an HTTP ``Range`` request on the ``.part`` file (also across
processes: a ``.part`` left by a killed download is continued next time). When the bytes are all
there the ``.part`` file is fsynced, its size and sha256 are checked against the expected ones
(where known), and only then renamed to ``dest`` (``os.replace``, then an fsync of the folder),
so ``dest`` is either absent or complete. A file that fails the check is deleted and refused with
a one-line :class:`CheckpointError`; so is a URL that cannot be had (offline, 404, server down),
naming the URL and the path where a file downloaded by hand is used as is. Processes that fetch
the same file (torchrun's ranks) take turns on ``.<name>.lock`` (``flock``): one downloads, the
others find the finished file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

from e2mc import fileio
from e2mc.errors import CheckpointError

CHUNK = 1 << 20
MAX_ATTEMPTS = 20  # connections that fail without bringing a single byte end the download
_SHA_MEMO: dict = {}


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (memoised per path, size and mtime within the process)."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(CHUNK), b""):
                h.update(block)
        _SHA_MEMO[key] = h.hexdigest()
    return _SHA_MEMO[key]


def by_hand(dest: Path) -> str:
    """The advice every refusal ends with: where a file fetched by other means is picked up."""
    return f"get it by other means (a browser, curl) and place it at {dest} (used as is)"


def check_file(path: Path, url: str, size: int | None = None, sha256: str | None = None) -> str:
    """sha256 of a complete file, after checking it against the known size and sha256."""
    got = path.stat().st_size
    if size is not None and got != size:
        raise CheckpointError(
            f"{path} is {got:,} bytes but {url} is {size:,} bytes; delete it, then load the name again"
        )
    digest = sha256_file(path)
    if sha256 is not None and digest != sha256.lower():
        raise CheckpointError(f"{path} has sha256 {digest}, not {sha256} ({url}); delete it, then load the name again")
    return digest


def _open(url: str, start: int, timeout: float):
    headers = {"User-Agent": "e2mc", "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _stream(resp, part: Path, have: int, bar) -> int:
    """Append the response's bytes to ``part`` (from byte ``have``); the bytes written. A cut
    connection ends it quietly: what reached the file is fsynced and resumed from."""
    got = 0
    with open(part, "ab" if have else "wb") as fh:
        while True:
            try:
                block = resp.read(CHUNK)
            except (http.client.HTTPException, OSError, socket.timeout):  # the connection, not the disk
                break
            if not block:
                break
            fh.write(block)  # a full disk raises here (OSError naming the file), never taken for a cut
            got += len(block)
            if bar is not None:
                bar.update(len(block))
        fh.flush()
        os.fsync(fh.fileno())
    return got


def _refuse(part: Path, msg: str):
    part.unlink(missing_ok=True)
    raise CheckpointError(msg)


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    size: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> str:
    """Download ``url`` to ``dest`` (resumable, checked, atomic); return the file's sha256.

    ``size`` (bytes) and ``sha256`` (hex) are checked when given; a file that fails them is
    deleted and a :class:`CheckpointError` raised. The server's own length (``Content-Length``
    / ``Content-Range``) is always checked: a short file is resumed, never kept as complete.
    """
    import fcntl

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(f".{dest.name}.lock"), "a") as lock:  # one writer (e.g. torchrun's ranks)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.is_file():  # another process finished it while this one waited
            return check_file(dest, url, size, sha256)
        return _download(url, dest, size, sha256, progress, timeout)


def _download(url: str, dest: Path, size, sha256, progress: bool, timeout: float) -> str:
    from tqdm.auto import tqdm

    part = dest.with_name(dest.name + ".part")
    fails, total, bar = 0, size, None
    if progress:
        resumed = f" (resuming {part.name})" if part.exists() else ""
        print(f"downloading {url} to {dest}{resumed}", file=sys.stderr, flush=True)
    try:
        while True:
            have = part.stat().st_size if part.exists() else 0
            if total is not None and have > total:
                part.unlink()
                have = 0
            if total is not None and have == total:
                break
            try:
                resp = _open(url, have, timeout)
            except urllib.error.HTTPError as exc:
                if exc.code == 416 and have:  # asked past the end: the .part may be whole, else start over
                    if total is None or have == total:
                        total = have
                    else:
                        part.unlink()
                        fails += 1
                    continue
                msg = f"cannot download {url} (HTTP {exc.code} {exc.reason}); {by_hand(dest)}"
                raise CheckpointError(msg) from None
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise CheckpointError(f"cannot download {url} ({reason}); {by_hand(dest)}") from None
            with resp:
                length = resp.headers.get("Content-Length")
                if resp.status == 206:
                    start = int(resp.headers.get("Content-Range", "bytes 0-").split()[1].split("-")[0])
                    if start != have:
                        _refuse(part, f"{url} answered a resume from byte {have} with byte {start}; try again")
                else:  # 200: the server sends the whole file
                    have = 0
                server_total = have + int(length) if length is not None else None
                if size is not None and server_total is not None and server_total != size:
                    _refuse(
                        part,
                        f"{url} is {server_total:,} bytes, not the {size:,} bytes e2mc expects (a cut or "
                        f"wrong file on the server); nothing kept. {by_hand(dest)}",
                    )
                total = server_total if server_total is not None else total
                if bar is None and progress:
                    bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr)
                elif bar is not None:
                    bar.n = have
                    bar.refresh()
                got = _stream(resp, part, have, bar)
            if total is None and got:  # no length given: the end of the stream is the end of the file
                total = have + got
            fails = 0 if got else fails + 1
            if fails >= MAX_ATTEMPTS:
                raise CheckpointError(
                    f"cannot download {url}: the connection keeps breaking at byte {have:,}; run again "
                    f"to resume, or {by_hand(dest)}"
                )
    finally:
        if bar is not None:
            bar.close()
    digest = sha256_file(part)
    if sha256 is not None and digest != sha256.lower():
        _refuse(
            part,
            f"{url} downloaded with sha256 {digest}, not the expected {sha256}; nothing kept. {by_hand(dest)}",
        )
    fileio.move_into_place(part, dest)
    _SHA_MEMO[(str(dest), dest.stat().st_size, dest.stat().st_mtime_ns)] = digest
    return digest
