"""Fault probes: does e2mc ever lose, corrupt or misreport work? (issue 11)

Runs a list of probes against the real command line (``python -m e2mc`` in subprocesses) on tiny
digits runs (resnet_mini 8-8-8 at 8 px, 128 images, batch 32) in a temporary folder, and sorts each
outcome into one of:

- ``OK``: it worked as it should (exit 0, state right; exit 3 for a signal, or 4 with its line when
  the collapse guard stopped the run on its best checkpoint, as documented);
- ``clear error``: exit 2, one ``e2mc CMD: error: ...`` line, no traceback, no unsafe-loading hint;
- ``LOST/CORRUPTED``: a run folder's earlier checkpoint or log gone or changed, a checkpoint with
  non-finite values, a log with duplicate or malformed rows, a resumed run that differs from the
  uninterrupted one, code from a pickle executed, or exit 0 where the input was wrong;
- ``TRACEBACK``: "Traceback" in the output or an exit code outside {0, 2, 3, 4};
- ``WRONG``: anything else that is not what the probe expects (an error where the run should work,
  an unclear error, leftover temp files).

Usage::

    python benchmarks/faults.py [-j 2] [--only CATEGORY] [--match TEXT[,TEXT]] [--out results.md] [--seed 0] [--keep]

Categories: checkpoint, crash, divergence, data, config, fs, concurrency, cache, files (issue 22:
official files, hostile pickles, published names offline; in ``faults_files.py``), world (issue 28:
data changed before a resume, symlink loops, 16-bit / animated / oddly named images, duplicate
YAML keys, checkpoints of a newer e2mc, typos; in ``faults_world.py``). The full list takes
about 10-15 minutes with ``-j 2`` on two CPU cores (each probe starts Python + torch at least once).
Run it with ``PYTHONPATH=src`` from a checkout to probe that tree rather than the installed e2mc.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import hashlib
import os
import pickle
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

OK, CLEAR, LOST, TRACE, WRONG = "OK", "clear error", "LOST/CORRUPTED", "TRACEBACK", "WRONG"
TINY = [
    "--dataset",
    "digits",
    "--method",
    "vicreg",
    "--set",
    "model.init=random:resnet_mini:8-8-8",
    "--set",
    "model.head_sizes={projector: [32, 32]}",
    "--set",
    "data.image_size=8",
    "--set",
    "data.limit=128",
    "--batch-size",
    "32",
    "--set",
    "train.probe_size=0",
    "--set",
    "train.tensorboard=false",
    "--set",
    "train.log_every=1",
    "--set",
    "train.seed=0",
]
BASE_EPOCHS = 3  # 4 steps an epoch: 12 steps
QUICK = TINY + ["--set", "train.max_steps=2"]
CONT = [
    "--set",
    "data.image_size=8",
    "--set",
    "data.limit=128",
    "--batch-size",
    "32",
    "--set",
    "train.probe_size=0",
    "--set",
    "train.tensorboard=false",
    "--set",
    "train.max_steps=2",
]  # for `continue CKPT --dataset digits`
EVAL = ["--dataset", "digits", "--protocols", "rankme", "--seeds", "0", "--image-size", "8"]

# Run inside the probed process to simulate file-system faults that root cannot make with chmod.
FAULT_WRAPPER = r"""
import errno, io, os, runpy, sys
kind, n = os.environ["E2MC_FAULT"], int(os.environ.get("E2MC_FAULT_N", "1"))
calls = {"n": 0}
if kind == "save_enospc":  # the N-th torch.save writes half the bytes, then the disk is full
    import torch
    real = torch.save
    def save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] < n:
            return real(obj, f, *a, **k)
        buf = io.BytesIO(); real(obj, buf, *a, **k); data = buf.getvalue()[: len(buf.getvalue()) // 2]
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as fh: fh.write(data)
        else:
            f.write(data)
        raise OSError(errno.ENOSPC, "No space left on device")
    torch.save = save
elif kind in ("metrics_enospc", "erofs"):
    import builtins
    real_open, real_mkdir = builtins.open, os.mkdir
    target = os.environ["E2MC_FAULT_PATH"]
    def bad(path):
        return str(os.fspath(path)).startswith(target) if isinstance(path, (str, os.PathLike)) else False
    def fopen(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+") and bad(file) and (kind == "erofs" or "metrics" in str(file)):
            calls["n"] += 1
            if calls["n"] >= n:
                code = errno.EROFS if kind == "erofs" else errno.ENOSPC
                raise OSError(code, os.strerror(code), str(file))
        return real_open(file, mode, *a, **k)
    def mkdir(path, *a, **k):
        if kind == "erofs" and bad(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *a, **k)
    builtins.open, io.open, os.mkdir = fopen, fopen, mkdir
    # e2mc appends to metrics.csv (and makes temp files) with os.open / os.write: fault those too
    real_osopen, real_write, real_close, fds = os.open, os.write, os.close, set()
    def osopen(path, flags, *a, **k):
        writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT)
        if writing and kind == "erofs" and bad(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        fd = real_osopen(path, flags, *a, **k)
        if writing and bad(path) and "metrics" in str(path):
            fds.add(fd)
        return fd
    def oswrite(fd, data):
        if fd in fds and kind == "metrics_enospc":
            calls["n"] += 1
            if calls["n"] >= n:  # half the row reaches the disk, then it is full
                real_write(fd, bytes(data)[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)
    def osclose(fd):
        fds.discard(fd)
        return real_close(fd)
    os.open, os.write, os.close = osopen, oswrite, osclose
sys.argv = ["e2mc"] + sys.argv[1:]
runpy.run_module("e2mc", run_name="__main__")
"""


@dataclass
class Proc:
    code: int
    out: str
    err: str


@dataclass
class Ctx:
    """What a probe gets: its own folder, the shared base run and datasets, a seeded RNG."""

    tmp: Path
    shared: Path
    rng: random.Random
    planted: set = field(default_factory=set)  # files the probe damaged on purpose (not judged)

    @property
    def base(self) -> Path:
        return self.shared / "base"

    @property
    def partial(self) -> Path:
        return self.shared / "partial"

    def env(self, **extra) -> dict:
        env = dict(
            os.environ,
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            E2MC_CACHE=str(self.tmp / "cache"),
            PYTHONWARNINGS="ignore",
            TQDM_DISABLE="1",
        )
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def cli(self, *args, env=None, timeout=300, wrapper=False) -> Proc:
        cmd = [sys.executable, "-c", FAULT_WRAPPER] if wrapper else [sys.executable, "-m", "e2mc"]
        try:
            p = subprocess.run(
                cmd + [str(a) for a in args],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env or self.env(),
                cwd=self.tmp,
            )
        except subprocess.TimeoutExpired as exc:
            return Proc(124, str(exc.stdout or ""), str(exc.stderr or "") + f"\n[probe] timed out after {timeout}s")
        return Proc(p.returncode, p.stdout, p.stderr)

    def start(self, *args, env=None) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "e2mc", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env or self.env(),
            cwd=self.tmp,
        )

    def copy_base(self, name="run", partial=False) -> Path:
        dst = self.tmp / name
        shutil.copytree(self.partial if partial else self.base, dst)
        return dst


@dataclass
class Result:
    name: str
    category: str
    expected: str
    outcome: str
    code: int | None
    line: str
    note: str = ""


# ---------------------------------------------------------------- checks on files and outputs


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(run: Path) -> dict[str, str]:
    """sha256 of a run folder's checkpoints, log and config (what must never be lost or changed)."""
    files = list(run.glob("checkpoints/*.pt")) + [run / "metrics.csv", run / "config.yaml"]
    return {str(p.relative_to(run)): sha(p) for p in files if p.is_file()}


def lost_files(before: dict, run: Path, allow_changed=()) -> list[str]:
    now = snapshot(run)
    return [
        f"{k} {'gone' if k not in now else 'changed'}"
        for k in before
        if k not in allow_changed and now.get(k) != before[k]
    ]


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def bad_checkpoints(root: Path, planted=()) -> list[str]:
    """Checkpoints under ``root`` that do not load or hold non-finite floats (planted ones skipped)."""
    bad = []
    for p in sorted(root.rglob("checkpoints/*.pt")) + sorted(root.rglob("checkpoints/*.safetensors")):
        if str(p) in planted or p.name.startswith("."):
            continue
        try:
            if p.suffix == ".safetensors":
                from safetensors.torch import load_file

                obj = load_file(str(p))
            else:
                obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            bad.append(f"{p.relative_to(root)} unreadable ({type(exc).__name__})")
            continue
        if any(t.is_floating_point() and not torch.isfinite(t).all() for t in _tensors(obj)):
            bad.append(f"{p.relative_to(root)} holds NaN/Inf")
    return bad


def bad_logs(root: Path, planted=()) -> list[str]:
    """metrics.csv files with rows of the wrong width or duplicate (step, phase) rows."""
    bad = []
    for p in root.rglob("metrics.csv"):
        if str(p) in planted or p.stat().st_size == 0 and not list(p.parent.glob("checkpoints/*.pt")):
            continue
        rows = list(csv.reader(p.open()))
        if not rows:
            bad.append(f"{p.relative_to(root)} empty")
            continue
        head, body = rows[0], rows[1:]
        if any(len(r) != len(head) for r in body):
            bad.append(
                f"{p.relative_to(root)} has rows of {sorted({len(r) for r in body})} fields under {len(head)} columns"
            )
            continue
        if "step" in head and "phase" in head:
            i, j = head.index("step"), head.index("phase")
            keys = [(r[i], r[j]) for r in body]
            if len(keys) != len(set(keys)):
                bad.append(f"{p.relative_to(root)} has {len(keys) - len(set(keys))} duplicate step rows")
    return bad


def log_rows(run: Path) -> list[tuple]:
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return [(r["step"], r["phase"], f"{float(r['loss']):.5g}" if r.get("loss") else "") for r in rows]


def same_weights(a: Path, b: Path) -> bool:
    sa = torch.load(a, map_location="cpu", weights_only=True)["model"]
    sb = torch.load(b, map_location="cpu", weights_only=True)["model"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def key_line(p: Proc) -> str:
    lines = [ln for ln in p.err.strip().splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith(("e2mc ", "e2mc:")) and ("error:" in ln or "interrupted" in ln)]
    line = (errs or lines or [p.out.strip().splitlines()[-1] if p.out.strip() else ""])[-1]
    return line[:160]


def verdict(p: Proc, expect: str, lost: list[str] = (), extra_wrong: str = "") -> tuple[str, str]:
    """Outcome and note for ``p`` given the expectation ``ok`` / ``error`` / ``ok|error`` / ``stop``."""
    text = p.out + p.err
    if lost:
        return LOST, "; ".join(lost)[:200]
    if "Traceback" in text or p.code not in (0, 2, 3, 4):
        return TRACE, f"exit {p.code}"
    allowed = expect.replace("+", "|").split("|")
    if p.code == 2:
        if "error" not in allowed:
            return WRONG, "an error where the run should work"
        errs = [ln for ln in p.err.splitlines() if ln.startswith(("e2mc ", "e2mc:")) and "error:" in ln]
        if len(errs) != 1 or "weights_only" in text or "Weights only" in text:
            return WRONG, "unclear error (not one line, or suggests unsafe loading)"
        return (WRONG, extra_wrong) if extra_wrong else (CLEAR, "")
    if p.code == 3:
        return (OK, "") if "stop" in allowed else (WRONG, "exit 3 (interrupted) unexpectedly")
    if p.code == 4:  # the collapse guard stopped the run on its best checkpoint, as documented
        said = "stopped by the collapse guard" in p.out
        return (OK, "exit 4: stopped by the collapse guard") if said else (WRONG, "exit 4 without its line")
    if "ok" not in allowed:  # exit 0 on an input that is wrong: misreported work
        return LOST, "exit 0 although the input is invalid"
    return (WRONG, extra_wrong) if extra_wrong else (OK, "")


def judge(ctx: Ctx, p: Proc, expect: str, lost=(), extra_wrong="") -> tuple[str, Proc, str]:
    """``verdict`` plus the generic checks over every run folder the probe wrote."""
    lost = list(lost) + bad_checkpoints(ctx.tmp, ctx.planted) + bad_logs(ctx.tmp, ctx.planted)
    outcome, note = verdict(p, expect, lost, extra_wrong)
    return outcome, p, note


# ---------------------------------------------------------------- probes

PROBES: list[tuple[str, str, str, callable]] = []


def probe(category: str, expected: str, name: str | None = None):
    def deco(fn):
        PROBES.append((name or fn.__name__.replace("_", " "), category, expected, fn))
        return fn

    return deco


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_file(ctx: Ctx, kind: str) -> Path:
    """A file of ``kind`` in the probe folder (marker file ``ran`` appears if its code executes)."""
    good = ctx.base / "checkpoints" / "last.pt"
    p = ctx.tmp / f"{kind}.pt"
    if kind == "garbage":
        p.write_bytes(bytes(ctx.rng.randrange(256) for _ in range(4096)))
    elif kind == "truncated":
        data = good.read_bytes()
        p.write_bytes(data[: ctx.rng.randrange(len(data) // 4, len(data) * 3 // 4)])
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "pickle_reduce":
        p.write_bytes(pickle.dumps(_Evil(ctx.tmp / "ran")))
    elif kind == "torch_reduce":
        torch.save({"model": {"w": torch.zeros(1)}, "x": _Evil(ctx.tmp / "ran")}, p)
    elif kind == "legacy_reduce":
        torch.save({"x": _Evil(ctx.tmp / "ran")}, p, _use_new_zipfile_serialization=False)
    elif kind == "text":
        p = ctx.tmp / "README.md"
        p.write_text("# notes\n\nThis is not a checkpoint.\n" * 30)
    elif kind == "numpy":
        p = ctx.tmp / "array.npy"
        np.save(p, np.zeros((4, 4)))
    elif kind == "foreign":
        torch.save({"encoder.layer1.weight": torch.randn(4, 4), "decoder.bias": torch.zeros(3)}, p)
    elif kind == "bad_safetensors":
        p = ctx.tmp / "bad.safetensors"
        p.write_bytes(b'\x40\x00\x00\x00\x00\x00\x00\x00{"w": {"dtype": "F32", "shape": [4]')
    else:
        raise ValueError(kind)
    return p


def _ran(ctx: Ctx) -> list[str]:
    return ["code in the pickle was EXECUTED"] if (ctx.tmp / "ran").exists() else []


def _ckpt_probe(kind: str, command: str):
    def fn(ctx: Ctx):
        path = _bad_file(ctx, kind)
        if command == "inspect":
            p = ctx.cli("inspect", path)
        elif command == "evaluate":
            p = ctx.cli("evaluate", path, *EVAL)
        else:
            p = ctx.cli("continue", path, "--dataset", "digits", *CONT, "--out", ctx.tmp / "run")
        return judge(ctx, p, "error", _ran(ctx))

    return fn


for _kind, _cmd in [
    ("garbage", "inspect"),
    ("truncated", "inspect"),
    ("empty", "inspect"),
    ("pickle_reduce", "inspect"),
    ("torch_reduce", "inspect"),
    ("legacy_reduce", "inspect"),
    ("text", "inspect"),
    ("numpy", "inspect"),
    ("foreign", "inspect"),
    ("bad_safetensors", "inspect"),
    ("garbage", "continue"),
    ("truncated", "continue"),
    ("torch_reduce", "continue"),
    ("foreign", "continue"),
    ("pickle_reduce", "evaluate"),
]:
    probe("checkpoint", "error", f"{_kind} file -> {_cmd}")(_ckpt_probe(_kind, _cmd))


@probe("checkpoint", "ok", "good checkpoint -> inspect, evaluate (control)")
def _good_ckpt(ctx: Ctx):
    p = ctx.cli("inspect", ctx.base / "checkpoints" / "last.pt")
    if p.code == 0:
        p = ctx.cli("evaluate", ctx.base, *EVAL)
    return judge(ctx, p, "ok")


def _resume_with_damaged_last(kind: str):
    def fn(ctx: Ctx):
        run = ctx.copy_base(partial=True)
        before = snapshot(run)
        last = run / "checkpoints" / "last.pt"
        if kind == "deleted":
            last.unlink()
        else:
            shutil.copy(_bad_file(ctx, kind), last)
            ctx.planted.add(str(last))
        p = ctx.cli("pretrain", "--out", run, "--resume")
        keep = [k for k in before if k.startswith("checkpoints/epoch_")]
        lost = lost_files({k: before[k] for k in keep}, run) + _ran(ctx)
        if p.code == 0:
            ctx.planted.discard(str(last))
            if not same_weights(last, ctx.base / "checkpoints" / "last.pt"):
                lost.append("the resumed run's weights differ from the uninterrupted run's")
            if log_rows(run) != log_rows(ctx.base):
                lost.append("metrics.csv differs from the uninterrupted run's")
        return judge(ctx, p, "ok|error", lost)

    return fn


for _kind in ("deleted", "truncated", "garbage", "torch_reduce"):
    probe("checkpoint", "ok|error", f"last.pt {_kind} + --resume")(_resume_with_damaged_last(_kind))


# ---- crashes


def _run_and_signal(ctx: Ctx, run: Path, sig, when) -> Proc:
    """Start the base recipe into ``run``; send ``sig`` when ``when(line, run)`` says so."""
    proc = ctx.start("pretrain", *TINY, "--epochs", BASE_EPOCHS, "--out", run)
    err_lines: list[str] = []
    fired = threading.Event()

    def reader():
        for line in proc.stderr:
            err_lines.append(line)
            if not fired.is_set() and when(line, run):
                fired.set()
                proc.send_signal(sig)

    def watcher():  # for kills during a checkpoint write: poll for the temp file
        while proc.poll() is None and not fired.is_set():
            if when(None, run):
                fired.set()
                proc.send_signal(sig)
                return
            time.sleep(0.0005)

    t1, t2 = threading.Thread(target=reader), threading.Thread(target=watcher)
    t1.start(), t2.start()
    out = proc.stdout.read()
    proc.wait(timeout=300)
    t1.join(), t2.join()
    return Proc(proc.returncode, out, "".join(err_lines))


def _at_step(k: int, extra: float):
    def when(line, run):
        if line is not None and f" step {k} " in line:
            time.sleep(extra)
            return True
        return False

    return when


def _during_write(line, run):
    return line is None and any(run.glob("checkpoints/.*.tmp"))


def _resume_matches(ctx: Ctx, run: Path, first: Proc, first_ok: tuple) -> tuple[str, Proc, str]:
    if first.code not in first_ok + (0,):  # 0: the run ended before the signal; resuming it is a no-op
        return judge(ctx, first, "stop" if 3 in first_ok else "ok")
    p = ctx.cli("pretrain", "--out", run, "--resume")
    lost = []
    if p.code == 0:
        if not same_weights(run / "checkpoints" / "last.pt", ctx.base / "checkpoints" / "last.pt"):
            lost.append("resumed weights differ from the uninterrupted run")
        if log_rows(run) != log_rows(ctx.base):
            lost.append("metrics.csv differs from the uninterrupted run's")
    leftover = [f.name for f in run.glob("checkpoints/.*.tmp")]
    return judge(ctx, p, "ok", lost, f"temp files left: {leftover}" if leftover else "")


def _kill_probe(k: int, extra: float):
    def fn(ctx: Ctx):
        run = ctx.tmp / "run"
        first = _run_and_signal(ctx, run, signal.SIGKILL, _at_step(k, extra))
        if not (run / "checkpoints" / "last.pt").exists():  # killed before the first checkpoint
            return _resume_matches_fresh(ctx, run)
        return _resume_matches(ctx, run, first, (-9, 0))

    return fn


def _resume_matches_fresh(ctx: Ctx, run: Path):
    """Killed before any checkpoint: --resume must start the run (or say there is none), not fail."""
    p = ctx.cli("pretrain", *TINY, "--epochs", BASE_EPOCHS, "--out", run, "--resume")
    lost = []
    if p.code == 0 and log_rows(run) != log_rows(ctx.base):
        lost.append("metrics.csv differs from the uninterrupted run's")
    return judge(ctx, p, "ok|error", lost)


_KILL_RNG = random.Random(11)
for _k in sorted(_KILL_RNG.sample(range(1, 4 * BASE_EPOCHS), 5)):
    _x = round(_KILL_RNG.uniform(0, 0.15), 3)
    probe("crash", "ok", f"kill -9 at step {_k}+{_x}s, then --resume")(_kill_probe(_k, _x))


@probe("crash", "ok", "kill -9 during a checkpoint write, then --resume")
def _kill_in_write(ctx: Ctx):
    run = ctx.tmp / "run"
    first = _run_and_signal(ctx, run, signal.SIGKILL, _during_write)
    return _resume_matches(ctx, run, first, (-9, 0))


@probe("crash", "stop+ok", "SIGTERM mid-run (exit 3), then --resume")
def _sigterm(ctx: Ctx):
    run = ctx.tmp / "run"
    first = _run_and_signal(ctx, run, signal.SIGTERM, _at_step(6, 0.0))
    return _resume_matches(ctx, run, first, (3,))


@probe("crash", "stop+ok", "SIGINT mid-run (exit 3), then --resume")
def _sigint(ctx: Ctx):
    run = ctx.tmp / "run"
    first = _run_and_signal(ctx, run, signal.SIGINT, _at_step(3, 0.0))
    return _resume_matches(ctx, run, first, (3, 130))


@probe("crash", "ok", "stale .last.pt.*.tmp from a killed write, then --resume")
def _stale_tmp(ctx: Ctx):
    run = ctx.copy_base(partial=True)
    (run / "checkpoints" / ".last.pt.k3j_9xQa.tmp").write_bytes(b"\0" * 4096)  # mkstemp's naming
    p = ctx.cli("pretrain", "--out", run, "--resume")
    left = list(run.glob("checkpoints/.*.tmp"))
    return judge(ctx, p, "ok", extra_wrong="stale temp file not cleaned" if left else "")


# ---- divergence


def _diverge(optim: str, lr: str, *extra):
    def fn(ctx: Ctx):
        run = ctx.tmp / "run"
        p = ctx.cli(
            "pretrain", *TINY, "--epochs", "2", "--set", f"optim.name={optim}", "--lr", lr, *extra, "--out", run
        )
        lost = []
        line = key_line(p)
        if p.code == 2 and "last good checkpoint" in line:
            named = next((w for w in line.split() if w.endswith(".pt")), None)
            if named and bad_checkpoints(Path(named).parent.parent):
                lost.append(f"the error names {named} as good but it is not")
        return judge(ctx, p, "ok|error", lost)

    return fn


for _opt, _lr, _ex in [
    ("sgd", "1000", ()),
    ("lars", "1000", ()),
    ("adamw", "1000", ()),
    ("sgd", "500", ("--set", "train.max_steps=1")),
]:
    probe("divergence", "ok|error", f"{_opt} lr={_lr} {' '.join(_ex)}".strip())(_diverge(_opt, _lr, *_ex))


@probe("divergence", "ok|error", "continue the base checkpoint with sgd lr=1000")
def _diverge_continue(ctx: Ctx):
    p = ctx.cli(
        "continue",
        ctx.base / "checkpoints" / "last.pt",
        "--dataset",
        "digits",
        *CONT,
        "--set",
        "optim.name=sgd",
        "--lr",
        "1000",
        "--set",
        "train.max_steps=6",
        "--out",
        ctx.tmp / "run",
    )
    return judge(ctx, p, "ok|error")


# ---- data


def _png(path: Path, rng: random.Random, size=12):
    from PIL import Image

    arr = np.array([[[rng.randrange(256) for _ in range(3)] for _ in range(size)] for _ in range(size)], np.uint8)
    Image.fromarray(arr).save(path)


def _folder(ctx: Ctx, classes=("a", "b"), n=12, flat=False, corrupt: str | None = None) -> Path:
    root = ctx.tmp / "images"
    root.mkdir()
    for c in classes:
        d = root if flat else root / c
        d.mkdir(exist_ok=True)
        for i in range(n):
            _png(d / f"{c}{i}.png", ctx.rng)
    if corrupt:
        d = root / classes[0]
        if corrupt == "garbage":
            (d / "bad.png").write_bytes(os.urandom(300))
        elif corrupt == "empty":
            (d / "bad.png").write_bytes(b"")
        elif corrupt == "truncated":
            data = (d / f"{classes[0]}0.png").read_bytes()
            (d / "bad.png").write_bytes(data[: len(data) // 2])
    return root


def _data_probe(expect: str, make, extra=(), command="pretrain"):
    def fn(ctx: Ctx):
        root = make(ctx)
        if command == "pretrain":
            args = [a if a != "digits" else root for a in QUICK] + ["--batch-size", "8"]  # folders hold 12-24 images
            p = ctx.cli("pretrain", *args, *extra, "--out", ctx.tmp / "run")
        else:
            p = ctx.cli("evaluate", ctx.base, *[a if a != "digits" else root for a in EVAL], *extra)
        return judge(ctx, p, expect)

    return fn


for _name, _exp, _make, _extra, _cmd in [
    ("missing folder", "error", lambda c: c.tmp / "nope", (), "pretrain"),
    ("empty folder", "error", lambda c: (c.tmp / "e").mkdir() or c.tmp / "e", (), "pretrain"),
    ("images but no class folders", "ok|error", lambda c: _folder(c, flat=True), (), "pretrain"),
    ("one class", "ok|error", lambda c: _folder(c, classes=("a",)), (), "pretrain"),
    (
        "garbage image, on_error=raise",
        "error",
        lambda c: _folder(c, corrupt="garbage"),
        ("--set", "data.on_error=raise"),
        "pretrain",
    ),
    (
        "garbage image, on_error=skip",
        "ok",
        lambda c: _folder(c, corrupt="garbage"),
        ("--set", "data.on_error=skip"),
        "pretrain",
    ),
    (
        "truncated image, on_error=skip",
        "ok",
        lambda c: _folder(c, corrupt="truncated"),
        ("--set", "data.on_error=skip"),
        "pretrain",
    ),
    ("evaluate on a missing folder", "error", lambda c: c.tmp / "nope", (), "evaluate"),
    ("unknown dataset name", "error", lambda c: "imagenet21k", (), "pretrain"),
]:
    probe("data", _exp, _name)(_data_probe(_exp, _make, _extra, _cmd))


# ---- config

BAD_VALUES = [
    ("--lr", "nan"),
    ("--lr", "inf"),
    ("--lr", "-0.1"),
    ("--lr", "1e39", "--set", "optim.name=sgd"),
    ("--set", "optim.weight_decay=-1", "--set", "optim.name=adamw"),
    ("--set", "train.grad_clip=-1"),
    ("--epochs", "-3"),
    ("--epochs", "0"),
    ("--batch-size", "0"),
    ("--set", "train.max_steps=0"),
    ("--set", "optim.momentum=2"),
    ("--set", "method.temperature=0", "--method", "swav"),
    ("--set", "data.limit=0"),
    ("--set", "data.image_size=0"),
    ("--seed", "-1"),
    ("--set", "addon.entropy_weight=nan"),
    ("--set", "train.epochs=.inf"),
    ("--set", "train.epochs=abc"),
    ("--set", "optim.lrr=0.1"),
]


def _config_probe(args, command="pretrain"):
    def fn(ctx: Ctx):
        out = ctx.tmp / "run"
        if command == "continue":
            p = ctx.cli(
                "continue", ctx.base / "checkpoints" / "last.pt", "--dataset", "digits", *CONT, *args, "--out", out
            )
        else:
            p = ctx.cli(command, *QUICK, *args, "--out", out)
        lost = ["the rejected run wrote a run folder"] if p.code == 2 and (out / "checkpoints").exists() else []
        return judge(ctx, p, "error", lost)

    return fn


for _args in BAD_VALUES:
    probe("config", "error", " ".join(_args))(_config_probe(_args))
for _args in [("--lr", "nan"), ("--epochs", "-3")]:
    probe("config", "error", "continue " + " ".join(_args))(_config_probe(_args, "continue"))


def _yaml_probe(text: str):
    def fn(ctx: Ctx):
        cfg = ctx.tmp / "c.yaml"
        cfg.write_text(text)
        p = ctx.cli("pretrain", "--config", cfg, "--out", ctx.tmp / "run", "--set", "train.max_steps=1")
        return judge(ctx, p, "error")

    return fn


for _name, _text in [
    ("bad YAML syntax", "optim: {lr: 0.1\ntrain: [\n"),
    ("YAML list, not mapping", "- 1\n- 2\n"),
    ("lr .nan in YAML", "optim:\n  lr: .nan\n"),
]:
    probe("config", "error", f"config file: {_name}")(_yaml_probe(_text))


# ---- file-system faults


@probe("fs", "error", "--out is an existing file")
def _out_is_file(ctx: Ctx):
    f = ctx.tmp / "file"
    f.write_text("precious\n")
    p = ctx.cli("pretrain", *QUICK, "--out", f)
    lost = [] if f.read_text() == "precious\n" else ["the file given as --out was changed"]
    return judge(ctx, p, "error", lost)


@probe("fs", "error", "--out under /proc")
def _out_proc(ctx: Ctx):
    return judge(ctx, ctx.cli("pretrain", *QUICK, "--out", "/proc/e2mc_probe/run"), "error")


@probe("fs", "error", "--out under a file (not a folder)")
def _out_under_file(ctx: Ctx):
    (ctx.tmp / "f").write_text("x")
    return judge(ctx, ctx.cli("pretrain", *QUICK, "--out", ctx.tmp / "f" / "run"), "error")


@probe("fs", "error", "read-only location (EROFS on every write)")
def _erofs(ctx: Ctx):
    out = ctx.tmp / "ro" / "run"
    env = ctx.env(E2MC_FAULT="erofs", E2MC_FAULT_PATH=ctx.tmp / "ro")
    return judge(ctx, ctx.cli("pretrain", *QUICK, "--out", out, env=env, wrapper=True), "error")


def _fs_resume_fault(kind: str, n: int):
    def fn(ctx: Ctx):
        run = ctx.copy_base(partial=True)
        before = snapshot(run)
        env = ctx.env(E2MC_FAULT=kind, E2MC_FAULT_N=n, E2MC_FAULT_PATH=run)
        p = ctx.cli("pretrain", "--out", run, "--resume", env=env, wrapper=True)
        keep = {k: v for k, v in before.items() if k.startswith("checkpoints/epoch_")}
        lost = lost_files(keep, run)
        if len(log_rows(run)) < len(log_rows(ctx.partial)):
            lost.append("metrics.csv lost rows")
        return judge(ctx, p, "error", lost)

    return fn


probe("fs", "error", "disk full during a checkpoint write (resume)")(_fs_resume_fault("save_enospc", 1))
probe("fs", "error", "disk full at the 2nd checkpoint write (resume)")(_fs_resume_fault("save_enospc", 3))
probe("fs", "error", "disk full on the metrics.csv append (resume)")(_fs_resume_fault("metrics_enospc", 1))
probe("fs", "error", "read-only run folder on resume")(_fs_resume_fault("erofs", 1))


@probe("fs", "error", "compare --out is a file")
def _compare_out_file(ctx: Ctx):
    (ctx.tmp / "f").write_text("x")
    return judge(ctx, ctx.cli("compare", ctx.base, *EVAL, "--out", ctx.tmp / "f"), "error")


@probe("fs", "error", "report --out under /proc")
def _report_proc(ctx: Ctx):
    return judge(ctx, ctx.cli("report", ctx.base, "--out", "/proc/e2mc_probe"), "error")


@probe("fs", "error", "export --out under /proc")
def _export_proc(ctx: Ctx):
    return judge(ctx, ctx.cli("export", ctx.base / "checkpoints" / "last.pt", "--out", "/proc/e2mc.pt"), "error")


# ---- concurrency


@probe("concurrency", "one ok + error", "two runs on one --out (vicreg and simsiam)")
def _two_runs(ctx: Ctx):
    run = ctx.tmp / "run"
    a = ctx.start("pretrain", *TINY, "--epochs", 10, "--out", run)
    time.sleep(0.5)
    b_args = [x if x != "vicreg" else "simsiam" for x in TINY]
    b_args = [x if "head_sizes" not in x else "model.head_sizes={proj_dim: 32}" for x in b_args]
    b = ctx.cli("pretrain", *b_args, "--epochs", 10, "--out", run)
    a_out, a_err = a.communicate(timeout=300)
    pa = Proc(a.returncode, a_out, a_err)
    codes = sorted([pa.code, b.code])
    if codes == [0, 0]:
        return judge(ctx, b, "error", ["both runs exited 0 writing into one folder"])
    loser = b if b.code != 0 else pa
    return judge(ctx, loser, "error", [] if codes == [0, 2] else [f"exits {codes}"])


@probe("concurrency", "one ok + error", "--resume while the run is still going")
def _resume_while_running(ctx: Ctx):
    run = ctx.tmp / "run"
    a = ctx.start("pretrain", *TINY, "--epochs", 60, "--out", run)
    t0 = time.time()
    while not (run / "checkpoints" / "last.pt").exists() and a.poll() is None and time.time() - t0 < 200:
        time.sleep(0.05)
    b = ctx.cli("pretrain", "--out", run, "--resume")
    if a.poll() is None:
        a.send_signal(signal.SIGTERM)  # saves and exits 3: no need to wait for 60 epochs
    a.communicate(timeout=300)
    if a.returncode in (0, 3) and b.code == 0:
        return judge(ctx, b, "error", ["both processes exited 0 writing into one folder"])
    return judge(ctx, b, "error", [] if a.returncode in (0, 3) else [f"the first run ended with exit {a.returncode}"])


@probe("concurrency", "ok", "two evaluates sharing one feature cache")
def _two_evals(ctx: Ctx):
    env = ctx.env()
    a = subprocess.Popen(
        [sys.executable, "-m", "e2mc", "evaluate", str(ctx.base), *EVAL],
        env=env,
        cwd=ctx.tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    b = ctx.cli("evaluate", ctx.base, *EVAL, env=env)
    a_out, a_err = a.communicate(timeout=300)
    pa = Proc(a.returncode, a_out, a_err)
    if pa.code != 0:
        return judge(ctx, pa, "ok")
    return judge(ctx, b, "ok", extra_wrong="" if pa.out == b.out else "the two results differ")


# ---- caches


def _cache_probe(damage: str):
    def fn(ctx: Ctx):
        first = ctx.cli("evaluate", ctx.base, *EVAL)
        if first.code != 0:
            return judge(ctx, first, "ok")
        entries = [p.parent for p in (ctx.tmp / "cache" / "features").glob("*/progress.json")]
        if not entries:
            return judge(ctx, first, "ok", extra_wrong="no cache entry written")
        e = entries[0] / "backbone.npy"  # an entry: <output>.npy memory maps, labels.npy, progress.json
        data = e.read_bytes()
        if damage == "truncated":
            e.write_bytes(data[: len(data) // 2])
        elif damage == "garbage":
            e.write_bytes(os.urandom(len(data)))
        elif damage == "empty":
            e.write_bytes(b"")
        elif damage == "no labels":
            (entries[0] / "labels.npy").unlink()
        elif damage == "wrong N":
            import numpy as np

            np.save(e, np.load(e)[:-5])
        second = ctx.cli("evaluate", ctx.base, *EVAL)
        wrong = ""
        if second.code == 0:
            if second.out != first.out:
                wrong = "recomputed result differs"
            elif len([ln for ln in second.err.splitlines() if ln.strip()]) != 1:
                wrong = "not exactly one warning line"
        return judge(ctx, second, "ok", extra_wrong=wrong)

    return fn


for _d in ("truncated", "garbage", "no labels", "wrong N"):
    probe("cache", "ok", f"feature cache entry {_d}")(_cache_probe(_d))


@probe("cache", "ok", "evaluate --no-cache writes no cache")
def _no_cache(ctx: Ctx):
    p = ctx.cli("evaluate", ctx.base, *EVAL, "--no-cache")
    wrote = (ctx.tmp / "cache").exists() and any((ctx.tmp / "cache").rglob("*"))
    return judge(ctx, p, "ok", extra_wrong="--no-cache wrote to the cache" if wrote else "")


@probe("cache", "ok", "feature cache folder is a file")
def _cache_is_file(ctx: Ctx):
    (ctx.tmp / "blocker").write_text("x")
    p = ctx.cli("evaluate", ctx.base, *EVAL, "--cache-dir", ctx.tmp / "blocker" / "features")
    return judge(ctx, p, "ok")


@probe("cache", "ok", "dataset .npy cache corrupted")
def _dataset_cache(ctx: Ctx):
    root = _folder(ctx)
    args = [a if a != "digits" else root for a in QUICK] + [
        "--batch-size",
        "8",
        "--set",
        f"data.cache_dir={ctx.tmp / 'dcache'}",
    ]
    p = ctx.cli("pretrain", *args, "--out", ctx.tmp / "run1")
    if p.code != 0:
        return judge(ctx, p, "ok")
    for f in (ctx.tmp / "dcache").rglob("*.npy"):
        f.write_bytes(f.read_bytes()[:100])
    return judge(ctx, ctx.cli("pretrain", *args, "--out", ctx.tmp / "run2"), "ok")


# ---- world (issue 28): the world changes under a run; files a new user has (benchmarks/faults_world.py)

if __package__:
    from . import faults_world
else:  # run as a script: benchmarks/ is on sys.path
    import faults_world

faults_world.register(sys.modules[__name__])


# ---------------------------------------------------------------- driver


def setup(shared: Path) -> None:
    """The shared base run: the tiny recipe, uninterrupted (the reference for resumed runs)."""
    ctx = Ctx(shared, shared, random.Random(0))
    p = ctx.cli("pretrain", *TINY, "--epochs", BASE_EPOCHS, "--out", shared / "base")
    if p.code != 0:
        sys.exit(f"setup: the base run failed (exit {p.code}):\n{p.err[-3000:]}")
    # "partial": the base run as it stood after epoch BASE_EPOCHS - 1 (a run to resume)
    part, last_epoch = shared / "partial", BASE_EPOCHS - 1
    shutil.copytree(shared / "base", part)
    (part / "checkpoints" / f"epoch_{BASE_EPOCHS:04d}.pt").unlink()
    shutil.copy(part / "checkpoints" / f"epoch_{last_epoch:04d}.pt", part / "checkpoints" / "last.pt")
    step = torch.load(part / "checkpoints" / "last.pt", weights_only=True)["step"]
    rows = list(csv.reader((part / "metrics.csv").open()))
    i = rows[0].index("step")
    with (part / "metrics.csv").open("w", newline="") as f:
        csv.writer(f).writerows([rows[0]] + [r for r in rows[1:] if int(r[i]) <= step])


def _register_extra_probes() -> None:
    """Probes kept in files of their own (``faults_runs.py``, issue 28: layouts on resume, out of
    memory, a torchrun rank killed, tune stopped; ``faults_files.py``, issue 22: official files,
    hostile pickles, published names offline), loaded by path so that this works as a script and
    as ``benchmarks.faults``."""
    import importlib.util

    for name in ("faults_runs", "faults_files"):
        spec = importlib.util.spec_from_file_location(f"e2mc_{name}", Path(__file__).with_name(f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mod.register(sys.modules[__name__])


_register_extra_probes()


def run_probe(i: int, item, shared: Path, seed: int, keep: bool) -> Result:
    name, category, expected, fn = item
    tmp = Path(tempfile.mkdtemp(prefix=f"p{i:03d}_", dir=shared))
    ctx = Ctx(tmp, shared, random.Random(f"{seed}:{name}"))
    t0 = time.time()
    try:
        outcome, proc, note = fn(ctx)
    except Exception as exc:  # noqa: BLE001 - a harness error is reported, not hidden
        return Result(name, category, expected, "HARNESS ERROR", None, f"{type(exc).__name__}: {exc}"[:160])
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    note = (note + f" ({time.time() - t0:.0f}s)").strip()
    return Result(name, category, expected, outcome, proc.code, key_line(proc), note)


def table(results: list[Result]) -> str:
    def cell(s):
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| # | probe | category | expected | outcome | exit | first error line / note |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(results, 1):
        text = r.line + (f" — {r.note}" if r.note else "")
        lines.append(
            f"| {i} | {cell(r.name)} | {r.category} | {r.expected} | **{r.outcome}** | {r.code} | {cell(text)} |"
        )
    return "\n".join(lines)


def totals(results: list[Result]) -> str:
    n = len(results)
    good = sum(r.outcome in (OK, CLEAR) for r in results)
    lost = sum(r.outcome == LOST for r in results)
    tb = sum(r.outcome == TRACE for r in results)
    other = n - good - lost - tb
    return (
        f"probes: {n} | OK or clear error: {good} | lost or corrupted: {lost} | tracebacks: {tb} | "
        f"other (wrong behaviour / harness error): {other}"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-j", type=int, default=2, help="probes run in parallel (default 2)")
    ap.add_argument(
        "--only",
        default=None,
        help="one category (checkpoint, crash, divergence, data, config, fs, "
        "concurrency, cache, files, world) or a comma-separated list",
    )
    ap.add_argument(
        "--match",
        "--name",
        default=None,
        help="only the probes whose name contains this text (or one of these comma-separated texts)",
    )
    ap.add_argument("--out", default=None, help="also write the Markdown results here")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random parts of the probes")
    ap.add_argument("--keep", action="store_true", help="keep the probe folders (printed at the end)")
    args = ap.parse_args(argv)
    items = PROBES
    if args.only:
        cats = set(args.only.split(","))
        unknown = cats - {c for _, c, _, _ in PROBES}
        if unknown:
            ap.error(f"unknown category {sorted(unknown)}")
        items = [p for p in PROBES if p[1] in cats]
    if args.match:
        wanted = args.match.split(",")
        items = [p for p in items if any(w in p[0] for w in wanted)]
        if not items:
            ap.error(f"no probe name contains {args.match!r}")
    shared = Path(tempfile.mkdtemp(prefix="e2mc_faults_"))
    t0 = time.time()
    print(f"setting up the base run in {shared} ...", file=sys.stderr, flush=True)
    setup(shared)
    results: list[Result | None] = [None] * len(items)
    with cf.ThreadPoolExecutor(max_workers=max(1, args.j)) as pool:
        futs = {pool.submit(run_probe, i, it, shared, args.seed, args.keep): i for i, it in enumerate(items)}
        for fut in cf.as_completed(futs):
            r = fut.result()
            results[futs[fut]] = r
            print(
                f"[{sum(x is not None for x in results)}/{len(items)}] {r.outcome:14s} {r.name}",
                file=sys.stderr,
                flush=True,
            )
    import e2mc

    head = (
        f"# e2mc fault probes\n\ncommand: `{' '.join(['python', *sys.argv])}`  \n"
        f"e2mc {e2mc.__version__} from {Path(e2mc.__file__).parent}, torch {torch.__version__}, "
        f"Python {platform.python_version()}, {platform.machine()} {os.cpu_count()} CPUs, -j {args.j}, "
        f"seed {args.seed}; {time.time() - t0:.0f} s\n"
    )
    text = f"{head}\n{table(results)}\n\n**{totals(results)}**\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if not args.keep:
        shutil.rmtree(shared, ignore_errors=True)
    else:
        print(f"probe folders kept in {shared}", file=sys.stderr)
    bad = [r for r in results if r.outcome in (LOST, TRACE)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
