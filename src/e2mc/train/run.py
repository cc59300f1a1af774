"""Run folder: layout checks, resolved config, atomic checkpoints, RNG capture/restore, metrics log.

Checkpoints are dicts of plain tensors and builtins (loadable with ``weights_only=True``) and are
written atomically: a temp file in the same folder, ``fsync``, then ``os.replace``. A crash
while writing leaves the previous checkpoint intact.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from e2mc.errors import CheckpointError, ConfigError

RUN_FILES = ("config.yaml", "load_report.json", "metrics.csv", "checkpoints", "tb")
FIXED_COLUMNS = ("wall_time", "epoch", "step", "phase")
TAIL_COLUMNS = ("lr", "img_per_s", "rankme", "rankme_proj", "entropy", "uniformity")


def check_run_dir(out_dir: str | Path, overwrite: bool) -> list[str]:
    """Run files already in ``out_dir``; ``ConfigError`` when there are some and not ``overwrite``."""
    path = Path(out_dir)
    existing = [f for f in RUN_FILES if (path / f).is_file() or ((path / f).is_dir() and any((path / f).iterdir()))]
    if existing and not overwrite:
        raise ConfigError(
            f"output folder {path} already holds a run ({', '.join(existing)}); pass --resume to "
            "continue it, --set out.overwrite=true to replace it, or choose another --out")
    return existing


def prepare_run_dir(out_dir: str | Path, resume: bool, overwrite: bool) -> Path:
    """Create/check the run folder. A folder holding another run is refused unless resume/overwrite
    (overwrite deletes only the run's own files: config, metrics, checkpoints, tb).

    Raises:
        ConfigError: the folder already holds a run and neither ``resume`` nor ``overwrite`` is set.
    """
    path = Path(out_dir)
    if not resume:
        for f in check_run_dir(path, overwrite):
            target = path / f
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    return path


def git_commit() -> str | None:
    """Commit hash of the e2mc source tree, or None when not in a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, write_fn: Any) -> None:
    """Write a file atomically: ``write_fn(fileobj)`` into a temp file, fsync, ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; run files follow the umask like open()
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: Path, state: dict) -> None:
    """Save ``state`` atomically with ``torch.save``."""
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file atomically."""
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON dump (non-JSON values become strings)."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def load_checkpoint(path: Path) -> dict:
    """Load an e2mc checkpoint with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; resume needs a run folder with checkpoints/last.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt/truncated or foreign pickle
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != "e2mc":
        raise CheckpointError(f"{path} is not an e2mc training checkpoint; use it as model.init instead")
    return state


def plain(obj: Any) -> bool:
    """True when ``obj`` holds only tensors and builtins (safe for ``weights_only`` loading)."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(obj, (list, tuple)):
        return all(plain(o) for o in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, (str, int)) and plain(v) for k, v in obj.items())
    return False


def capture_rng() -> dict:
    """Torch, CUDA, NumPy and Python RNG states as tensors/lists (weights_only-safe)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Inverse of ``capture_rng``."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


class MetricsLog:
    """Appending CSV log with a stable header (read back from an existing file on resume).

    The columns are fixed by the first row that names its loss terms (``terms``); rows that come
    before it (e.g. the metrics before the first step) wait in memory until then or ``close()``.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.columns: list[str] | None = None
        self._waiting: list[dict] = []
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as f:
                self.columns = next(csv.reader(f), None)

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
        self.columns = list(FIXED_COLUMNS) + list(terms) + list(TAIL_COLUMNS)
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerow(self.columns)

    def _append(self, rows: list[dict]) -> None:
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore", restval="")
            for row in rows:
                w.writerow({k: (f"{v:.3f}" if k == "wall_time" else _fmt(v)) for k, v in row.items()})


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.7g}"
    return v


def read_metrics(path: str | Path) -> list[dict]:
    """Read a run's ``metrics.csv`` into a list of dict rows (strings)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def build_state(t: Any, epoch_file: bool = False) -> dict:
    """The e2mc checkpoint dict of a ``Trainer`` ``t`` (plain tensors and builtins only)."""
    import e2mc

    rng = capture_rng()
    if t.dist.world_size > 1:
        import torch.distributed as dist

        gathered: list = [None] * t.dist.world_size
        dist.all_gather_object(gathered, rng)
        rng_all = gathered
    else:
        rng_all = [rng]
    sched = t.scheduler.state_dict() if t.scheduler is not None else {}
    return {
        "e2mc_version": e2mc.__version__, "format": "e2mc", "method": t.cfg.method.name,
        "arch": t.model.arch, "cifar_stem": bool(t.model.cifar_stem),
        "head_sizes": dict(t.model.head_sizes), "model": t.model.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scheduler": {k: v for k, v in sched.items() if plain(v)},
        "scaler": t.scaler.state_dict() if t.scaler.is_enabled() else {},
        "epoch": t.epoch, "step": t.global_step, "step_in_epoch": t.step_in_epoch,
        "run_step": t.run_step, "warmup_done": bool(t.warmup_done),
        "rng": {"per_rank": rng_all}, "world_size": t.dist.world_size,
        "swav_queue": t.queue.state_dict() if t.queue is not None else None,
        "config": t.cfg.to_dict(), "source_format": t.source_format, "source_epoch": t.source_epoch,
        "source_layout": dict(t.source_layout),
    }


def restore_state(t: Any, state: dict) -> None:
    """Load a checkpoint dict made by ``build_state`` into the ``Trainer`` ``t``."""
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    if t.scheduler is not None and state.get("scheduler"):
        t.scheduler.load_state_dict({**t.scheduler.state_dict(), **state["scheduler"]})
    if state.get("scaler") and t.scaler.is_enabled():
        t.scaler.load_state_dict(state["scaler"])
    if t.queue is not None and state.get("swav_queue") is not None:
        t.queue.load_state_dict(state["swav_queue"])
    t.epoch, t.global_step = int(state["epoch"]), int(state["step"])
    t.step_in_epoch, t.run_step = int(state["step_in_epoch"]), int(state["run_step"])
    t.warmup_done = bool(state["warmup_done"])
    per_rank = state["rng"]["per_rank"]
    if len(per_rank) == t.dist.world_size:
        restore_rng(per_rank[t.dist.rank])
    else:  # another world size: exact continuation is impossible; reseed per rank
        torch.manual_seed(t.cfg.train.seed + 1000 * t.epoch + t.dist.rank)
        t.log(f"resuming on {t.dist.world_size} processes from a checkpoint of {len(per_rank)}: "
              "RNG streams reseeded (the run is no longer bit-identical to an uninterrupted one)")


RESUME_KEYS = (("method", "name"), ("data", "dataset"), ("optim", "batch_size"), ("train", "seed"),
               ("addon", "name"), ("optim", "lr"), ("optim", "schedule"))
# The scheduler's state (restored on resume) carries its step function, so these would be silently
# ignored if they changed; with a constant LR they do not shape it and may change (extend a run).
SCHEDULE_KEYS = (("train", "epochs"), ("optim", "warmup_epochs"))


def check_resume_config(stored: dict, cfg: Any) -> None:
    """``ConfigError`` when the settings that define a run differ from the checkpoint's."""
    if stored.get("mode") and stored["mode"] != cfg.mode:
        raise ConfigError(f"the run in {cfg.out.dir} is a {stored['mode']} run; resume it with "
                          f"`e2mc {stored['mode']} --out {cfg.out.dir} --resume`")
    diffs = []
    keys = RESUME_KEYS + (SCHEDULE_KEYS if (cfg.optim.schedule or "constant") != "constant" else ())
    for sec, key in keys:
        old, new = stored.get(sec, {}).get(key), getattr(getattr(cfg, sec), key)
        if old is not None and old != new:
            diffs.append(f"{sec}.{key}: checkpoint {old!r}, now {new!r}")
    if diffs:
        raise ConfigError("cannot resume with different settings (" + "; ".join(diffs) + "); resume with "
                          "the run's own config (--config RUN_DIR/config.yaml) or start a new --out")


class RunFolderMixin:
    """Run-folder side of the ``Trainer``: run files, metrics rows, TensorBoard, logs, checkpoints.

    Only rank 0 writes; every rank takes part in the collective steps of ``save``.
    """

    def _write_run_files(self) -> None:
        import e2mc

        info = {"world_size": self.dist.world_size, "per_device_batch": self.per_device_batch,
                "global_batch": self.global_batch, "effective_lr": self.lr,
                "e2mc_version": e2mc.__version__, "torch_version": str(torch.__version__),
                "git_commit": git_commit(), "source_format": self.source_format,
                "source_epoch": self.source_epoch, "heads_built": self.heads_built,
                "device": str(self.device), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_text_atomic(self.run_dir / "config.yaml",
                            yaml.safe_dump({**self.cfg.to_dict(), "run_info": info}, sort_keys=False))
        if self.report is not None:
            write_json(self.run_dir / "load_report.json", self.report.to_dict())

    def _tensorboard(self):
        if not (self.dist.is_main and self.cfg.train.tensorboard):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: metrics.csv only
            return None
        return SummaryWriter(str(self.run_dir / "tb"))

    def write_row(self, row: dict, terms: list | None = None) -> None:
        """Append a metrics row (rank 0 only) and mirror it to TensorBoard."""
        if self.metrics is None:
            return
        self.metrics.write({"wall_time": round(time.time(), 3), **row}, terms)
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, float) and k not in ("epoch", "step"):
                    self.tb.add_scalar(f"{row['phase']}/{k}", v, row["step"])

    def log(self, msg: str) -> None:
        """A log line on stderr (rank 0 only)."""
        if self.dist.is_main and not self.quiet:
            (self.bar.write if getattr(self, "bar", None) is not None else lambda s: print(s, file=sys.stderr, flush=True))(msg)

    def save(self, final: bool = False, epoch_file: bool = False) -> None:
        """Write ``checkpoints/last.pt`` (and ``epoch_XXXX.pt``) atomically, after a finiteness check."""
        self._flush("train")  # raises TrainingDiverged before a bad state reaches the disk
        state = build_state(self, epoch_file)
        if self.dist.is_main:
            ckpt = self.run_dir / "checkpoints"
            save_checkpoint(ckpt / "last.pt", state)
            if epoch_file:
                save_checkpoint(ckpt / f"epoch_{self.epoch:04d}.pt", state)
        from e2mc.train.distributed import barrier

        barrier(self.dist)

    def _close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        from e2mc.train.distributed import teardown

        teardown(self.dist)
