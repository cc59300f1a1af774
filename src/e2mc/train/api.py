"""Python API of the training engine: ``pretrain`` and ``continue_training``.

Example:
    >>> from e2mc import continue_training                               # doctest: +SKIP
    >>> run = continue_training("vicreg_e2mc_imagenet",                  # doctest: +SKIP
    ...                         model__init="resnet50_fullckpt.pth", train__epochs=2)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from e2mc.config import RunConfig, load_config


def _overrides(mode: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"optim__lr": 0.1, "addon.name": "vc"}`` -> ``{"optim.lr": 0.1, "addon.name": "vc", "mode": mode}``."""
    out = {k.replace("__", "."): v for k, v in overrides.items()}
    out["mode"] = mode
    return out


def build_config(mode: str, config_or_path: str | Path | dict | RunConfig | None = None,
                 **overrides: Any) -> RunConfig:
    """Resolve a config for ``mode`` ("pretrain" / "continue") from a file/recipe/dict plus overrides."""
    return load_config(config_or_path, _overrides(mode, overrides))


def pretrain(config_or_path: str | Path | dict | RunConfig | None = None, **overrides: Any) -> Path:
    """Pre-train from scratch (or from ``model.init``) and return the run folder.

    ``config_or_path``: a ``RunConfig``, a dict, a YAML path or a recipe name. Keyword overrides
    use ``__`` or dots for sections: ``pretrain("digits_vicreg_pretrain", train__epochs=1)``.
    Raises :class:`~e2mc.errors.RunInterrupted` when SIGTERM/SIGINT stopped the run (a checkpoint
    is saved first; resume with ``out__resume=True``).
    """
    return _fit(build_config("pretrain", config_or_path, **overrides))


def continue_training(config_or_path: str | Path | dict | RunConfig | None = None, **overrides: Any) -> Path:
    """Continue pre-training a checkpoint (``model.init``) with the configured add-on; return the run folder.

    Defaults for continued training: constant LR, no LR warm-up; fresh heads (backbone-only
    checkpoints) are warmed up for ``train.head_warmup_steps`` with the backbone frozen.
    Raises :class:`~e2mc.errors.RunInterrupted` like :func:`pretrain`.
    """
    return _fit(build_config("continue", config_or_path, **overrides))


def _fit(cfg: RunConfig) -> Path:
    """Train; raise :class:`~e2mc.errors.RunInterrupted` if a signal stopped the run before its end."""
    from e2mc.errors import RunInterrupted
    from e2mc.train.loop import Trainer

    trainer = Trainer(cfg)
    run_dir = Path(trainer.fit())
    if trainer.stop_requested:
        raise RunInterrupted(run_dir, trainer.epoch, trainer.global_step)
    return run_dir
