"""Export one pre-training checkpoint as the committed start of the reproduction.

Writes ``<out-root>/<name>/model.safetensors`` (backbone + every head and momentum teacher
(``start_heads``), floating tensors in fp16,
metadata ``arch``, ``cifar_stem``, ``method``, ``format``) and ``start.json`` (config, seed, git
commit, source epoch, the kNN curve point of that epoch if a curve file is given, sha256, sizes).
``e2mc.load_model`` reads the safetensors file directly (heads included; nothing is built fresh),
so ``e2mc continue benchmarks/starts/<name>/model.safetensors`` starts from it; the script checks
that round trip before it returns.

    python -m benchmarks.reproduce.export_start /work/e2mc-runs/cifar10_vicreg_r18/checkpoints/epoch_0030.pt \
        --name cifar10_vicreg_r18 --curve benchmarks/results/cifar10_vicreg_curve.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks.reproduce.common import command_line, file_digest, read_json, write_json

MODEL_FILE, META_FILE = "model.safetensors", "start.json"


def fp16_state(model) -> dict:
    """The model's state dict on the CPU with floating tensors cast to fp16 (integers kept)."""
    return {
        k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()).contiguous().clone()
        for k, v in model.state_dict().items()
    }


def start_heads(model) -> list[str]:
    """The model's head slots and momentum-teacher slots (``projector``; DINO's ``head``, ``teacher``)."""
    from e2mc.methods import METHODS

    spec = METHODS.get(model.method or "")
    slots = (*spec.heads, *spec.teacher) if spec is not None else ("projector", "predictor", "prototypes")
    return [h for h in slots if getattr(model, h, None) is not None]


def start_paths(start: str | Path) -> tuple[Path, dict]:
    """``(model.safetensors path, start.json dict)`` of a start folder (or a safetensors file)."""
    from e2mc.errors import DataError

    p = Path(start)
    folder = p.parent if p.is_file() else p
    model = folder / MODEL_FILE
    meta = read_json(folder / META_FILE)
    if not model.is_file() or meta is None:
        raise DataError(
            f"{folder} is not a start folder: it needs {MODEL_FILE} and {META_FILE} "
            "(write one with python -m benchmarks.reproduce.export_start)"
        )
    return model, meta


def export_start(
    checkpoint: str | Path, out_dir: str | Path, *, curve: str | Path | None = None, max_mb: float = 40.0, log=print
) -> dict:
    """Export ``checkpoint`` into ``out_dir``; return the ``start.json`` dict.

    Raises ``ConfigError`` when the file would exceed ``max_mb`` and ``CheckpointError`` when the
    round trip through ``e2mc.load_model`` does not give back the same fp16 weights and heads.
    """
    from safetensors.torch import save_file

    from e2mc.errors import CheckpointError, ConfigError
    from e2mc.fileio import atomic_write
    from e2mc.models.checkpoints import load_model
    from e2mc.models.export import refused
    from e2mc.train.run import git_commit

    model, report = load_model(str(checkpoint))
    raw = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    cfg = raw.get("config", {}) if isinstance(raw, dict) else {}
    state = fp16_state(model)
    n_params = sum(v.numel() for v in state.values() if v.is_floating_point())
    est_mb = sum(v.numel() * v.element_size() for v in state.values()) / 2**20
    if est_mb > max_mb:
        raise ConfigError(
            f"{checkpoint} would export to {est_mb:.1f} MiB in fp16, over the {max_mb} MiB limit; "
            "use a smaller model or raise --max-mb"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "arch": model.arch,
        "cifar_stem": str(bool(model.cifar_stem)),
        "method": model.method or "",
        "format": "e2mc",
    }
    path = atomic_write(out / MODEL_FILE, lambda tmp: save_file(state, tmp, metadata=meta), error=refused)
    back, back_report = load_model(str(path), method=model.method)
    if back_report.heads_built or set(back.state_dict()) != set(state):
        raise CheckpointError(f"round trip of {path} lost heads {back_report.heads_built}; not a usable start")
    worst = max(
        float((back.state_dict()[k].float() - v.float()).abs().max()) if v.numel() else 0.0 for k, v in state.items()
    )
    if worst != 0.0:
        raise CheckpointError(f"round trip of {path} changed weights (max |diff| {worst}); not a usable start")
    epoch = raw.get("epoch") if isinstance(raw, dict) else None
    point = None
    if curve is not None:
        rows = (read_json(curve) or {}).get("points", [])
        point = next((r for r in rows if r.get("epoch") == epoch), None)
    run_yaml = Path(checkpoint).parent.parent / "config.yaml"
    run_info = {}
    if run_yaml.is_file():
        import yaml

        run_info = (yaml.safe_load(run_yaml.read_text()) or {}).get("run_info", {})
    info = {
        "name": out.name,
        "source_checkpoint": str(Path(checkpoint).resolve()),
        "source_epoch": epoch,
        "source_step": raw.get("step") if isinstance(raw, dict) else None,
        "method": model.method,
        "arch": model.arch,
        "cifar_stem": bool(model.cifar_stem),
        "head_sizes": model.head_sizes,
        "heads": start_heads(model),
        "seed": (cfg.get("train") or {}).get("seed"),
        "config": cfg,
        "run_info": run_info,
        "pretrain_git_commit": run_info.get("git_commit"),
        "export_git_commit": git_commit(),
        "dtype": "float16",
        "n_params": n_params,
        "size_bytes": path.stat().st_size,
        "sha256": file_digest(path),
        "curve_point": point,
        "command": command_line(),
        "load_check": "e2mc.load_model(model.safetensors) gives the same fp16 weights, no head built fresh",
    }
    write_json(out / META_FILE, info)
    log(
        f"start written: {path} ({info['size_bytes'] / 2**20:.1f} MiB, {n_params / 1e6:.2f} M params, "
        f"epoch {epoch}, sha256 {info['sha256'][:12]})"
    )
    return info


def main(argv=None) -> int:
    """CLI: ``python -m benchmarks.reproduce.export_start CHECKPOINT --name NAME``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="an e2mc checkpoint (e.g. RUN/checkpoints/epoch_0030.pt)")
    ap.add_argument("--name", required=True, help="start name: the folder under --out-root")
    ap.add_argument("--out-root", default="benchmarks/starts")
    ap.add_argument(
        "--curve", default=None, help="curve JSON of curve.py (its point for this epoch goes in start.json)"
    )
    ap.add_argument("--max-mb", type=float, default=40.0)
    args = ap.parse_args(argv)
    export_start(args.checkpoint, Path(args.out_root) / args.name, curve=args.curve, max_mb=args.max_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
