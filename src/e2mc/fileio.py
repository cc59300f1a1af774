"""Files: the one atomic write every file e2mc writes goes through, and the cache root.

``atomic_write(path, write)`` calls ``write(tmp)`` with the path of a temp file in ``path``'s own
folder, named ``.<name>.<8 random characters>.tmp`` (:data:`TEMP_NAME`), then

1. ``fsync`` of the temp file (its bytes are on disk before it gets the final name),
2. ``os.replace(tmp, path)`` (atomic on POSIX and Windows within one file system),
3. ``fsync`` of the folder (the rename itself survives a power cut).

A crash at any point leaves the old file or the new one, never a torn one; a killed write leaves
at most a temp file, which :func:`e2mc.train.run.remove_temp_files` recognises by its name. On
any error the temp file is removed and the exception propagates, or, when the caller passes
``error=(path, exc) -> Exception | None``, the one-line error that ``error`` makes of it
(``train.run.write_error``: ``RunIOError`` for run files; ``models.export``: ``CheckpointError``);
``parents=True`` makes missing parent folders first (inside the same error handling). The file
gets the permissions ``open()`` would give it (the umask), not ``mkstemp``'s 0600.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> atomic_write_text(d / "a.txt", "hello").name
'a.txt'
>>> (d / "a.txt").read_text(), [p.name for p in d.iterdir()]
('hello', ['a.txt'])
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

TEMP_NAME = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")  # the names atomic_write gives its temp files

_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:  # some platforms cannot open a folder; the rename is still atomic
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # a folder fsync refused (EINVAL on some file systems) is not an error
            raise
    finally:
        os.close(fd)


def cache_root() -> Path:
    """Where e2mc caches (datasets, features, the demo's start): ``$E2MC_CACHE`` if set, else
    ``~/.cache/e2mc``. Each user keeps its own sub-folder (``datasets``, ``features``)."""
    root = os.environ.get("E2MC_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "e2mc"


ErrorFn = Callable[[Path, Exception], Exception | None]  # a failed write -> the error to raise (None: as it is)


def atomic_write(
    path: str | os.PathLike, write: Callable[[str], Any], *, parents: bool = False, error: ErrorFn | None = None
) -> Path:
    """Write ``path`` atomically: ``write(tmp_path)``, fsync, ``os.replace``, fsync of the folder.

    ``parents``: make missing parent folders first. ``error(path, exc)``: for an exception of
    the write (the old file intact, the temp file removed), the error to raise instead (one line
    saying what to do), or None to let ``exc`` propagate.
    """
    path = Path(path)
    try:
        if parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        _replace_atomically(path, write)
    except Exception as exc:
        mapped = error(path, exc) if error is not None else None
        if mapped is None:
            raise
        raise mapped from None
    return path


def _replace_atomically(path: Path, write: Callable[[str], Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # again: a writer may make its own file (safetensors' save_file: 0600)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_path(path.parent, directory=True)


def move_into_place(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Give a finished file its final name atomically: fsync ``tmp``, ``os.replace`` it over
    ``path``, fsync the folder (for files written in pieces, e.g. a resumable download's ``.part``)."""
    _fsync_path(tmp)
    os.replace(tmp, path)
    _fsync_path(Path(path).parent, directory=True)
    return Path(path)


def move_dir_into_place(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Give a finished folder its final name atomically (``path`` must not exist or be an empty
    folder): ``os.replace`` it, fsync the parent folder. Its files are the caller's to have synced."""
    os.replace(tmp, path)
    _fsync_path(Path(path).parent, directory=True)
    return Path(path)


def atomic_write_file(path: str | os.PathLike, write: Callable[[BinaryIO], Any], **kw: Any) -> Path:
    """:func:`atomic_write` for writers that take an open binary file (``torch.save``, ``np.save``);
    ``kw``: ``parents``, ``error``."""

    def to_file(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            write(fh)

    return atomic_write(path, to_file, **kw)


def atomic_write_text(path: str | os.PathLike, text: str, **kw: Any) -> Path:
    """:func:`atomic_write` of a UTF-8 text; ``kw``: ``parents``, ``error``."""
    return atomic_write_file(path, lambda fh: fh.write(text.encode("utf-8")), **kw)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, **kw: Any) -> Path:
    """:func:`atomic_write_text` of ``obj`` as JSON and a newline (values JSON cannot hold become
    strings); ``kw``: ``parents``, ``error``."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=str) + "\n", **kw)
