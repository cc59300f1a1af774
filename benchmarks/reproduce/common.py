"""Helpers shared by the reproduction scripts: machine description, atomic JSON, cached evaluation."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from e2mc.fileio import atomic_write_text

SCHEMA = 1


def command_line() -> str:
    """The exact command line of this process, shell-quoted (``python -m ...`` form)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(".py") and "benchmarks" in argv[0]:
        mod = Path(argv[0]).with_suffix("").parts
        mod = mod[mod.index("benchmarks") :] if "benchmarks" in mod else mod
        argv = ["-m", ".".join(mod)] + argv[1:]
    return " ".join(shlex.quote(a) for a in ["python", *argv])


def machine() -> dict:
    """CPU model, cores, memory, load average, Python/torch/e2mc versions and the git commit."""
    import torch

    import e2mc
    from e2mc.train.run import git_commit

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    mem_gb = None
    try:
        kb = next(
            int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")
        )
        mem_gb = round(kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "load_average_1_5_15": load,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "e2mc": e2mc.__version__,
        "git_commit": git_commit(),
        "cuda": torch.cuda.is_available(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write JSON atomically (:func:`e2mc.fileio.atomic_write_text`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


def read_json(path: str | os.PathLike, default=None):
    """Parsed JSON of ``path``, or ``default`` when it does not exist."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else default


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file (e2mc's feature-cache hash, so both agree)."""
    from e2mc.evaluation.features import file_sha256

    return file_sha256(path)


def cached_evaluate(
    checkpoint: str | os.PathLike,
    dataset: str,
    protocols,
    store: str | os.PathLike,
    *,
    seeds=(0,),
    ks=(20, 200),
    batch_size: int = 256,
    feature_cache: bool = False,
    log=print,
) -> tuple[dict, float]:
    """``e2mc.evaluation.api.evaluate`` of one checkpoint, memoised in the JSON file ``store``.

    The key is the checkpoint's sha256, the dataset spec, the protocols, seeds and ks, so a
    re-run (or an appended arm) evaluates only what is new. Returns (result, seconds spent now;
    0 when it came from the store). ``feature_cache`` off by default: at CIFAR scale e2mc's feature
    cache holds ~0.6 GB per checkpoint (train + test, backbone + projector), and this memo makes it
    redundant.
    """
    from e2mc.evaluation.api import evaluate, evaluation_settings

    sha = file_digest(checkpoint)
    key = hashlib.sha256(json.dumps([sha, str(dataset), list(protocols), list(seeds), list(ks)]).encode()).hexdigest()[
        :24
    ]
    path = Path(store) / f"{key}.json"
    hit = read_json(path)
    if hit is not None:
        return hit["result"], 0.0
    log(f"  evaluating {checkpoint} on {dataset} ({', '.join(protocols)})")
    t0 = time.perf_counter()
    settings = evaluation_settings(
        seeds=tuple(seeds), ks=tuple(ks), device="cpu", batch_size=batch_size, use_cache=feature_cache
    )
    res = evaluate(str(checkpoint), dataset, tuple(protocols), settings)
    dt = time.perf_counter() - t0
    res.setdefault("meta", {})["sha256"] = sha
    write_json(
        path,
        {"checkpoint": str(checkpoint), "sha256": sha, "dataset": str(dataset), "seconds": round(dt, 2), "result": res},
    )
    return res, dt
