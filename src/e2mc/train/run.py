"""Run folder: ``RunFolder`` (the trainer's ``self.run``), layout checks, atomic checkpoints (their
contents: ``train.state``), metrics log.

``RunFolder`` is owned and called by the ``Trainer`` and calls nothing of it: it is given the
process layout and a log function, and the config, rows, run info and checkpoint dicts it writes.
Checkpoints are dicts of plain tensors and builtins (loadable with ``weights_only=True``) and are
written atomically (``e2mc.fileio``): a temp file in the same folder, ``fsync``, then
``os.replace``. A crash while writing leaves the previous checkpoint intact; its temp file is
removed at the next start of the run (``remove_temp_files``). A run holds ``RunLock`` on its folder
for its whole life. Write failures (disk full, read-only, permissions) become ``RunIOError``
naming the file (``write_error``).
"""

from __future__ import annotations

import csv
import errno
import io
import math
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from e2mc.errors import CheckpointError, ConfigError, RunIOError, RunLocked
from e2mc.fileio import TEMP_NAME, atomic_write_file, atomic_write_json, atomic_write_text
from e2mc.train.distributed import DistInfo, main_first

RUN_FILES = ("config.yaml", "load_report.json", "metrics.csv", "checkpoints", "tb", "guard_events.json")
FIXED_COLUMNS = ("wall_time", "epoch", "step", "phase")
TAIL_COLUMNS = ("lr", "img_per_s", "rankme", "rankme_proj", "entropy", "uniformity")
# the collapse guard's rows (phase "guard", e2mc.train.guard): its score, values and event lines
GUARD_COLUMNS = (
    "guard_score",
    "guard_rankme",
    "guard_rankme_proj",
    "guard_entropy",
    "guard_agreement",
    "guard_knn",
    "guard_event",
)


BEST = "best.pt"  # the collapse guard's best checkpoint (e2mc.train.guard): never resumed from


def run_files(out_dir: str | Path) -> list[str]:
    """The run files (``RUN_FILES``; folders only when not empty, ``checkpoints`` only when it holds
    more than the guard's ``best.pt``) present in ``out_dir``."""
    path = Path(out_dir)

    def held(f: str) -> bool:
        return (path / f).is_dir() and any(p.name != BEST or f != "checkpoints" for p in (path / f).iterdir())

    return [f for f in RUN_FILES if (path / f).is_file() or held(f)]


def holds_run(out_dir: str | Path) -> bool:
    """True when ``out_dir`` holds a run to resume: its ``config.yaml`` or a checkpoint file."""
    path = Path(out_dir)
    return (path / "config.yaml").is_file() or any((path / "checkpoints").glob("*.pt"))


def check_out_path(out_dir: str | Path) -> None:
    """``ConfigError`` when ``out_dir`` exists but is not a folder."""
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ConfigError(f"--out {out_dir} is a file, not a folder; give a folder path for the run")


def check_run_dir(out_dir: str | Path, overwrite: bool) -> list[str]:
    """Run files already in ``out_dir``; ``ConfigError`` when there are some and not ``overwrite``."""
    path = Path(out_dir)
    existing = run_files(path)
    if existing and not overwrite:
        raise ConfigError(
            f"output folder {path} already holds a run ({', '.join(existing)}); pass --resume to "
            "continue it, --set out.overwrite=true to replace it, or choose another --out"
        )
    return existing


def prepare_run_dir(out_dir: str | Path, resume: bool, overwrite: bool) -> Path:
    """Create/check the run folder. A folder holding another run is refused unless resume/overwrite
    (overwrite deletes only the run's own files: config, metrics, checkpoints, tb).

    Raises:
        ConfigError: the folder already holds a run and neither ``resume`` nor ``overwrite`` is set.
    """
    path = Path(out_dir)
    try:
        if not resume:
            for f in check_run_dir(path, overwrite):
                target = path / f
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise io_error("prepare the run folder", path, exc) from None
    return path


_RESUME = "then rerun with --resume (a run goes on from its last checkpoint)"
_ADVICE = {
    errno.ENOSPC: f"the disk is full: free space there, {_RESUME}, or choose another --out",
    errno.EDQUOT: f"the disk quota is exceeded: free space there, {_RESUME}, or choose another --out",
    errno.EROFS: f"the file system is read-only: make it writable, {_RESUME}, or choose another --out",
    errno.EACCES: f"permission denied: make the folder writable, {_RESUME}, or choose one you can write (--out)",
    errno.EPERM: f"permission denied: make the folder writable, {_RESUME}, or choose one you can write (--out)",
}
_SHORT_WRITE = ("unexpected pos", "file write failed")  # torch.save's messages for a failed write


def io_error(action: str, path: str | Path, exc: BaseException) -> RunIOError:
    """A one-line ``RunIOError``: what failed (``action``), where (``path``) and what to do."""
    err = getattr(exc, "errno", None)
    if err is None and any(m in str(exc) for m in _SHORT_WRITE):
        err, reason = errno.ENOSPC, "the write was cut short"
    else:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0][:200]
    advice = _ADVICE.get(err, "check the path and the disk, or choose another --out")
    return RunIOError(f"could not {action} {path}: {reason} ({advice}); files written before are intact")


def git_commit() -> str | None:
    """Commit hash of the e2mc source tree, or None when not in a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def write_error(path: Path, exc: Exception) -> RunIOError | None:
    """``fileio.atomic_write``'s ``error`` for run files: an ``OSError`` (or torch.save's cut-short
    write) becomes a one-line ``RunIOError`` naming the file; the previous file stays intact."""
    if isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and any(m in str(exc) for m in _SHORT_WRITE)):
        return io_error("write", path, exc)
    return None


def remove_temp_files(run_dir: str | Path) -> list[str]:
    """Delete the temp files that killed atomic writes left in a run folder; their names (relative).

    Call it only while holding the run's ``RunLock`` (no other writer can be mid-write then).
    """
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.is_file() and TEMP_NAME.fullmatch(p.name):
                try:
                    p.unlink()
                except OSError as exc:
                    raise io_error("remove the leftover temp file", p, exc) from None
                removed.append(str(p.relative_to(run_dir)))
    return removed


def save_checkpoint(path: Path, state: dict) -> None:
    """Save ``state`` atomically with ``torch.save`` (``RunIOError`` when the file system refuses)."""
    atomic_write_file(path, lambda f: torch.save(state, f), error=write_error)


def load_checkpoint(path: Path) -> dict:
    """Load an e2mc checkpoint with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; resume needs a run folder with checkpoints/last.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt/truncated or foreign pickle: say what it is, never torch's unsafe hint
        from e2mc.models.checkpoints import describe_unreadable

        raise CheckpointError(describe_unreadable(path, exc)) from None
    if not isinstance(state, dict) or state.get("format") != "e2mc":
        raise CheckpointError(f"{path} is not an e2mc training checkpoint; use it as model.init instead")
    return state


def nonfinite(state: dict, keys: tuple = ("model", "optimizer", "scaler")) -> str | None:
    """Name of a NaN/Inf value in the tensors and floats of ``state[keys]`` (a checkpoint dict), else None.

    Cheap: one sum per floating tensor (NaN/Inf always make the sum non-finite), stacked and
    tested with one host sync per device; only when a sum is not finite (a value is, or a huge
    finite tensor overflowed the sum) are the tensors checked element-wise to name the culprit.
    ResNet-50 parameters + buffers + momentum (51M values) on one CPU thread: ~70 ms, against
    ~1 s for ``torch.save`` of the same state.
    """
    named: list = []

    def walk(name: str, obj: Any) -> str | None:
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() and obj.numel():
                named.append((name, obj))
        elif isinstance(obj, float):
            return None if math.isfinite(obj) else name
        elif isinstance(obj, (dict, list, tuple)):
            for k, v in obj.items() if isinstance(obj, dict) else enumerate(obj):
                if (bad := walk(f"{name}.{k}", v)) is not None:
                    return bad
        return None

    for key in keys:
        if (bad := walk(key, state.get(key))) is not None:
            return bad
    by_device: dict = {}
    for name, t in named:
        by_device.setdefault(t.device, []).append((name, t))
    for items in by_device.values():
        sums = torch.stack([t.sum(dtype=torch.float32) for _, t in items])
        if bool(torch.isfinite(sums).all()):
            continue
        for name, t in items:
            if not bool(torch.isfinite(t).all()):
                return name
    return None


def find_resume_checkpoint(run_dir: str | Path) -> tuple[Path, dict, list[str]] | None:
    """The newest usable checkpoint of a run: ``checkpoints/last.pt``, else the newest ``epoch_N.pt``.

    Usable means readable, an e2mc training checkpoint, and finite. Returns ``(path, state,
    passed_over)`` where ``passed_over`` says why newer files were skipped; None when the folder
    holds no checkpoint file at all. Nothing is modified.

    Raises:
        CheckpointError: checkpoint files exist but none is usable.
    """
    ck = Path(run_dir) / "checkpoints"
    epochs = [(int(m.group(1)), p) for p in ck.glob("epoch_*.pt") if (m := re.fullmatch(r"epoch_(\d+)\.pt", p.name))]
    candidates = [ck / "last.pt"] + [p for _, p in sorted(epochs, reverse=True)]
    passed: list[str] = []
    for p in candidates:
        if not p.is_file():
            passed.append(f"{p.name} is missing")
            continue
        try:
            state = load_checkpoint(p)
        except CheckpointError as exc:
            why = str(exc).splitlines()[0].split("; pass ")[0]  # the reason, not continue's advice for a file
            passed.append(f"{p.name} is unreadable ({why if len(why) <= 200 else why[:197] + '...'})")
            continue
        bad = nonfinite(state, ("model", "optimizer"))
        if bad:
            passed.append(f"{p.name} holds non-finite values ({bad})")
            continue
        return p, state, passed
    if not any(p.is_file() for p in candidates):
        return None
    raise CheckpointError(
        f"--resume: no usable checkpoint in {ck} ({'; '.join(passed)}); nothing was changed. "
        "Start the run again without --resume and with --set out.overwrite=true (replaces "
        "the run's files), or choose another --out"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """Exclusive lock on a run folder, held for the run's life (``RUN_DIR/.e2mc.lock``).

    ``fcntl.flock`` on the open lock file: the OS releases it when the process dies, so a killed
    run never blocks its resume. The file holds ``PID HOST START`` of the holder (for the message
    a second process gets) and is emptied on a clean release; finding it non-empty when taking the
    lock means the previous holder died (its stale lock is taken over with a warning). Without
    ``fcntl`` (Windows) no lock is taken.
    """

    NAME = ".e2mc.lock"

    def __init__(self, f: Any) -> None:
        self._f = f

    @classmethod
    def acquire(cls, run_dir: str | Path, log: Any = None) -> RunLock | None:
        """Take the lock (creating the folder).

        Raises:
            RunLocked: another live process holds it (message: its PID and host).
            RunIOError: the folder or the lock file cannot be created.
        """
        try:
            import fcntl
        except ImportError:
            return None
        path = Path(run_dir) / cls.NAME
        try:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            f = open(path, "a+")
        except OSError as exc:
            raise io_error("create the run folder and its lock file", path, exc) from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().split()
            f.close()
            who = f"PID {holder[0]} on {holder[1]}, started {holder[2]}" if len(holder) >= 3 else "another process"
            raise RunLocked(
                f"run folder {run_dir} is in use by another e2mc run ({who}); wait for it to end "
                "or stop it, or choose another --out"
            ) from None
        except OSError as exc:
            f.close()
            raise io_error("lock", path, exc) from None
        f.seek(0)
        prev = f.read().split()
        if prev and log is not None:
            pid, host = prev[0], prev[1] if len(prev) > 1 else "?"
            state = (
                "no longer running"
                if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid))
                else "not holding it any more"
            )
            log(
                f"warning: taking over the stale lock of {run_dir} left by PID {pid} on {host} ({state}: "
                "the run was killed)"
            )
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        f.flush()
        return cls(f)

    def release(self) -> None:
        """Empty the lock file and release the lock (idempotent)."""
        if self._f is None or self._f.closed:
            return
        import fcntl

        try:
            self._f.seek(0)
            self._f.truncate()
            self._f.flush()
        except OSError:  # the lock goes anyway
            pass
        fcntl.flock(self._f.fileno(), fcntl.LOCK_UN)  # also when forked workers still hold the fd
        self._f.close()


class MetricsLog:
    """Appending CSV log with a stable header (read back from an existing file on resume).

    The columns are fixed by the first row that names its loss terms (``terms``); rows that come
    before it (e.g. the metrics before the first step) wait in memory until then or ``close()``.
    ``rows`` counts the data rows in the file (checkpoints store it). On resume, ``keep_rows``
    (or, for checkpoints without that count, ``keep_step``) drops the rows a killed attempt wrote
    after the checkpoint, so the log equals an uninterrupted run's. A failed append (disk full)
    is undone, never leaving a half row; the header is written atomically.
    """

    def __init__(self, path: Path, keep_rows: int | None = None, keep_step: int | None = None) -> None:
        self.path = Path(path)
        self.columns: list[str] | None = None
        self.rows = 0
        self._waiting: list[dict] = []
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as f:
                text = f.read()
            lines = text.splitlines(keepends=True)
            if lines and not lines[-1].endswith("\n"):  # a row cut by a kill
                lines = lines[:-1]
            if not lines:
                return
            self.columns = next(csv.reader(lines[:1]))
            body = lines[1:]
            if keep_rows is not None:
                body = body[:keep_rows]
            elif keep_step is not None:
                col = self.columns.index("step") if "step" in self.columns else None
                body = [ln for ln in body if col is None or _step_of(ln, col) <= keep_step]
            self.rows = len(body)
            kept = "".join(lines[:1] + body)
            if kept != text:
                atomic_write_text(self.path, kept, error=write_error)

    def write(self, row: dict, terms: list[str] | None = None) -> None:
        """Append one row (``terms``: the loss-term keys of a training row)."""
        if self.columns is None:
            if terms is None:
                self._waiting.append(row)
                return
            self._start(terms)
        self._append([*self._waiting, row])
        self._waiting = []

    def close(self) -> None:
        """Write rows still waiting for a header."""
        if self._waiting:
            if self.columns is None:
                self._start([])
            self._append(self._waiting)
            self._waiting = []

    def _start(self, terms: list[str]) -> None:
        columns = list(FIXED_COLUMNS) + list(terms) + list(TAIL_COLUMNS) + list(GUARD_COLUMNS)
        buf = io.StringIO()
        csv.writer(buf).writerow(columns)
        atomic_write_text(self.path, buf.getvalue(), error=write_error)
        self.columns = columns

    def _append(self, rows: list[dict]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore", restval="")
        for row in rows:
            w.writerow({k: (f"{v:.3f}" if k == "wall_time" else _fmt(v)) for k, v in row.items()})
        data = buf.getvalue().encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            raise io_error("append to the metrics log", self.path, exc) from None
        try:
            size = os.fstat(fd).st_size
            try:
                done = 0
                while done < len(data):
                    done += os.write(fd, data[done:])
            except OSError as exc:
                os.ftruncate(fd, size)  # no half row
                raise io_error("append to the metrics log", self.path, exc) from None
        finally:
            os.close(fd)
        self.rows += len(rows)


def _step_of(line: str, col: int) -> float:
    try:
        return float(next(csv.reader([line]))[col])
    except (ValueError, IndexError, StopIteration):
        return math.inf


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.7g}"
    return v


def read_metrics(path: str | Path) -> list[dict]:
    """Read a run's ``metrics.csv`` into a list of dict rows (strings)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


RESUME_KEYS = (
    ("method", "name"),
    ("data", "dataset"),
    ("optim", "batch_size"),
    ("train", "seed"),
    ("addon", "name"),
    ("optim", "lr"),
    ("optim", "schedule"),
)
# The scheduler's state (restored on resume) carries its step function, so these would be silently
# ignored if they changed; with a constant LR they do not shape it and may change (extend a run).
SCHEDULE_KEYS = (("train", "epochs"), ("optim", "warmup_epochs"))


def stored_config_matches(run_dir: str | Path, cfg: Any) -> bool:
    """True when ``run_dir/config.yaml`` is readable and describes the same run as ``cfg``
    (``check_resume_config`` passes)."""
    try:
        with open(Path(run_dir) / "config.yaml") as f:
            stored = yaml.safe_load(f) or {}
        check_resume_config(stored, cfg)
    except (OSError, yaml.YAMLError, ConfigError, AttributeError):
        return False
    return True


def set_aside_attempt(run_dir: str | Path) -> Path | None:
    """Move the run files of an attempt that left no checkpoint into ``run_dir/stopped/<time>/``
    (nothing is deleted); the folder it made, or None when there was nothing to move."""
    path = Path(run_dir)
    files = [f for f in run_files(path) if f != "checkpoints"]
    if not files:
        return None
    dest = path / "stopped" / time.strftime("%Y%m%d-%H%M%S")
    try:
        dest.mkdir(parents=True, exist_ok=False)
        moves = [(path / f, dest / f) for f in files]
        if (path / "checkpoints" / BEST).is_file():  # the attempt's guard checkpoint goes with it
            (dest / "checkpoints").mkdir()
            moves.append((path / "checkpoints" / BEST, dest / "checkpoints" / BEST))
        for src, dst in moves:
            os.replace(src, dst)
    except OSError as exc:
        raise io_error("set aside the files of the stopped attempt in", dest, exc) from None
    return dest


def _same_path(a, b) -> bool:
    """Two spellings of one local path (``calls/``, ``./calls``, its absolute path from here)."""
    if not isinstance(a, str) or not isinstance(b, str) or not (os.path.exists(a) or os.path.exists(b)):
        return False
    return os.path.abspath(os.path.expanduser(a)) == os.path.abspath(os.path.expanduser(b))


def check_resume_config(stored: dict, cfg: Any) -> None:
    """``ConfigError`` when the settings that define a run differ from the checkpoint's."""
    if stored.get("mode") and stored["mode"] != cfg.mode:
        raise ConfigError(
            f"the run in {cfg.out.dir} is a {stored['mode']} run; resume it with "
            f"`e2mc {stored['mode']} --out {cfg.out.dir} --resume`"
        )
    diffs = []
    keys = RESUME_KEYS + (SCHEDULE_KEYS if (cfg.optim.schedule or "constant") != "constant" else ())
    for sec, key in keys:
        old, new = stored.get(sec, {}).get(key), getattr(getattr(cfg, sec), key)
        if old is not None and old != new and not _same_path(old, new):
            diffs.append(f"{sec}.{key}: checkpoint {old!r}, now {new!r}")
    if diffs:
        raise ConfigError(
            "cannot resume with different settings (" + "; ".join(diffs) + "); resume with "
            "the run's own config (--config RUN_DIR/config.yaml) or start a new --out"
        )


class RunFolder:
    """A run's folder, owned by the ``Trainer`` (``trainer.run``) and called by it, never calling back.

    ``open(cfg)`` takes the lock (rank 0) and finds the checkpoint to resume or readies the folder;
    ``open_log`` starts the metrics log (and TensorBoard); ``write_run_files`` writes config.yaml
    and load_report.json; ``write_row`` appends a metrics row; ``write_checkpoint`` writes
    ``last.pt`` (and ``epoch_XXXX.pt``) atomically and records it as ``last_good``; ``close``
    ends the log and releases the lock. Only rank 0 writes; every rank takes part in the
    collective steps (``main_first``). ``log``: the trainer's log line (rank 0 prints).
    """

    def __init__(self, path: str | Path, dist: DistInfo, log: Callable[[str], None]) -> None:
        self.path, self.dist, self.log = Path(path), dist, log
        self.lock: RunLock | None = None
        self.metrics: MetricsLog | None = None  # rank 0 only
        self.tb: Any = None
        # the checkpoint resumed from or last written (both checked finite), and its step
        self.last_good: Path | None = None
        self.last_good_step: int | None = None
        self.created = False  # open() made the folder: a run that fails to start removes it (discard)

    def open(self, cfg: Any) -> tuple[Path, dict] | None:
        """Lock the folder (rank 0) before touching any file in it, then find the checkpoint to
        resume (``(path, state)``) or make the folder ready for a new run (``None``).

        Nothing is deleted unless ``out.overwrite``. On ``--resume``, a folder whose run stopped
        before its first checkpoint (no checkpoint file, and its config.yaml is this run's) starts the
        run again, its files moved to ``stopped/<time>/``; run files of another run, or checkpoint
        files none of which is usable, are refused.
        """
        path = self.path
        check_out_path(path)
        self.created = not path.exists()
        if cfg.out.resume and not holds_run(path):
            raise ConfigError(
                f"--resume: {path} holds no run to resume (no config.yaml, no "
                "checkpoints/last.pt); check --out, or drop --resume to start a new run"
            )

        def lock() -> None:
            self.lock = RunLock.acquire(path, self.log)

        main_first(self.dist, lock)
        try:
            found, restart = self._find(cfg)

            def tidy() -> None:
                removed = remove_temp_files(path)
                if removed:
                    self.log(f"removed {len(removed)} temp file(s) left by an interrupted write: {', '.join(removed)}")
                if restart:
                    kept = set_aside_attempt(path)
                    self.log(
                        f"--resume: {path} has no checkpoint yet (the run stopped before its first one); "
                        f"starting it again{f' (the stopped attempt’s files are kept in {kept})' if kept else ''}"
                    )
                prepare_run_dir(path, found is not None, cfg.out.overwrite)

            main_first(self.dist, tidy)
        except BaseException:
            self.unlock()
            raise
        if found is None:
            return None
        self.last_good, self.last_good_step = found[0], int(found[1]["step"])
        return found[0], found[1]

    def _find(self, cfg: Any) -> tuple[tuple | None, bool]:
        """``(found, restart)``: the checkpoint to resume (``find_resume_checkpoint``'s triple), and
        whether a stopped attempt without a checkpoint starts again; every rank reads the same files."""
        path = self.path
        if not cfg.out.resume:  # every rank checks before rank 0 creates anything
            check_run_dir(path, cfg.out.overwrite)
            return None, False
        found = find_resume_checkpoint(path)
        if found is None and stored_config_matches(path, cfg):
            return None, True  # this run, stopped before its first checkpoint: start it again
        if found is None:
            files = ", ".join(run_files(path)) or "no run files"
            raise ConfigError(
                f"--resume: {path} holds {files} but no checkpoint, and its config.yaml is not this "
                "run's; nothing was changed. Resume with the run's own settings (drop --config/--set), "
                "start it again with --set out.overwrite=true (replaces these files), or choose another --out"
            )
        ckpt, _, passed = found
        if passed:
            self.log(f"--resume: {'; '.join(passed)}; resuming from {ckpt} instead")
        return found, False

    def open_log(self, resumed: dict | None, tensorboard: bool) -> None:
        """The metrics log (rank 0), cut back to the checkpoint ``resumed`` from, and TensorBoard."""
        if not self.dist.is_main:
            return
        keep = {} if resumed is None else {"keep_rows": resumed.get("metrics_rows"), "keep_step": int(resumed["step"])}
        self.metrics = MetricsLog(self.path / "metrics.csv", **keep)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: metrics.csv only
                return
            # steps after the checkpoint resumed from were logged by the stopped attempt: hidden, as metrics.csv cuts them
            purge = None if resumed is None else int(resumed["step"]) + 1
            self.tb = SummaryWriter(str(self.path / "tb"), purge_step=purge)

    @property
    def metrics_rows(self) -> int | None:
        """Data rows in metrics.csv (checkpoints store it); None on other ranks than 0."""
        return self.metrics.rows if self.metrics is not None else None

    def write_run_files(self, cfg: Any, report: Any, setup: dict, origin: dict) -> None:
        """config.yaml (the resolved config and ``run_info``: ``setup``, versions, ``origin``) and
        load_report.json (``report``, when the run loaded a file); rank 0 only."""
        import e2mc

        if not self.dist.is_main:
            return
        info = {
            **setup,
            "e2mc_version": e2mc.__version__,
            "torch_version": str(torch.__version__),
            "git_commit": git_commit(),
            **origin,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        text = yaml.safe_dump({**cfg.to_dict(), "run_info": info}, sort_keys=False)
        atomic_write_text(self.path / "config.yaml", text, error=write_error)
        if report is not None:
            atomic_write_json(self.path / "load_report.json", report.to_dict(), error=write_error)

    def write_row(self, row: dict, terms: list | None = None) -> None:
        """Append a metrics row (rank 0 only) and mirror it to TensorBoard."""
        if self.metrics is None:
            return
        self.metrics.write({"wall_time": round(time.time(), 3), **row}, terms)
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, float) and k not in ("epoch", "step"):
                    self.tb.add_scalar(f"{row['phase']}/{k}", v, row["step"])

    def write_checkpoint(self, state: dict, step: int, epoch: int | None = None) -> None:
        """``checkpoints/last.pt`` (and ``epoch_XXXX.pt`` for ``epoch``) atomically on rank 0; a failed
        write (``RunIOError``) stops every rank. The written file becomes ``last_good``."""
        ckpt = self.path / "checkpoints"

        def write() -> None:
            save_checkpoint(ckpt / "last.pt", state)
            if epoch is not None:
                save_checkpoint(ckpt / f"epoch_{epoch:04d}.pt", state)

        main_first(self.dist, write)
        self.last_good, self.last_good_step = ckpt / "last.pt", step

    def write_best(self, state: dict) -> None:
        """``checkpoints/best.pt`` (the collapse guard's best so far) atomically on rank 0."""
        main_first(self.dist, lambda: save_checkpoint(self.path / "checkpoints" / BEST, state))

    def write_json(self, name: str, obj: Any) -> None:
        """A JSON run file (e.g. the collapse guard's events) atomically, rank 0 only."""
        if self.dist.is_main:
            atomic_write_json(self.path / name, obj, error=write_error)

    def unlock(self) -> None:
        """Release the folder's lock (idempotent)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def discard(self) -> None:
        """After a run that failed before it began (a refused setting): release the lock and remove
        the folder this run made, when it holds nothing but the lock file and empty folders; a
        folder that was there before, or holds anything else, stays as it is."""
        try:  # removed while the lock is held: no other run can have taken the folder meanwhile
            if self.created and self.dist.is_main and self.path.is_dir():
                files = [p for p in self.path.rglob("*") if not p.is_dir()]
                if all(p.name == RunLock.NAME and p.parent == self.path for p in files):
                    shutil.rmtree(self.path, ignore_errors=True)
        finally:
            self.unlock()

    def close(self) -> None:
        """Write the metrics rows still waiting, close TensorBoard, release the lock."""
        try:
            if self.metrics is not None:
                self.metrics.close()
        finally:
            if self.tb is not None:
                self.tb.close()
            self.unlock()
