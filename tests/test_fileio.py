"""e2mc.fileio: the single atomic-write helper (temp file, fsync, os.replace, fsync of the folder)."""

import os
import stat

import pytest

from e2mc import fileio


def test_replaces_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("old")
    assert fileio.atomic_write_text(p, "new") == p
    assert p.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["x.json"]


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"old")
    seen = []

    def half_then_fail(fh):
        fh.write(b"partial")
        seen.append(os.listdir(tmp_path))
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        fileio.atomic_write_file(p, half_then_fail)
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.bin"]
    temp = [n for n in seen[0] if n != "x.bin"]
    assert len(temp) == 1 and fileio.TEMP_NAME.fullmatch(temp[0])  # the name cleanup recognises


def test_fsyncs_file_before_rename_then_folder(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: (events.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode))), real_fsync(fd))
    )
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", None)), real_replace(a, b)))
    fileio.atomic_write_text(tmp_path / "y.txt", "z")
    assert events == [("fsync", False), ("replace", None), ("fsync", True)]


def test_permissions_are_those_open_gives(tmp_path):
    """mkstemp makes 0600 files; a written file must get what open() gives (the umask)."""
    p = fileio.atomic_write_text(tmp_path / "m.txt", "z")
    (tmp_path / "plain.txt").write_text("z")
    assert stat.S_IMODE(os.stat(p).st_mode) == stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode)


def test_every_writer_goes_through_fileio():
    """The class of bug "a sixth hand-written temp-file + os.replace": only e2mc.fileio renames a
    temp file over a target (run.py's os.replace moves a stopped attempt's files aside)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    allowed = {"src/e2mc/fileio.py": None, "src/e2mc/train/run.py": r"os\.replace\(path / f, dest / f\)"}
    offenders = []
    for path in sorted([*root.joinpath("src").rglob("*.py"), *root.joinpath("benchmarks").rglob("*.py")]):
        rel = path.relative_to(root).as_posix()
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"os\.(replace|rename)\(|mkstemp\(", line) and not line.lstrip().startswith("#"):
                ok = rel in allowed and (allowed[rel] is None or re.search(allowed[rel], line))
                if not ok:
                    offenders.append(f"{rel}:{n}: {line.strip()}")
    assert offenders == [], "write through e2mc.fileio.atomic_write*: " + "; ".join(offenders)
