"""Python API of the training engine: ``pretrain`` and ``continue_training``.

``e2mc pretrain`` / ``e2mc continue`` call ``resolve_config`` too, so a call here and the command
with the same settings resolve the same run (auto-resume, resume from the run's own config, the
checkpoint's own method).

Example:
    >>> from e2mc import continue_training                               # doctest: +SKIP
    >>> run = continue_training("vicreg_e2mc_imagenet",                  # doctest: +SKIP
    ...                         model__init="resnet50_fullckpt.pth", train__epochs=2)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from e2mc.config import RunConfig, load_config, parse_override
from e2mc.errors import CheckpointError, ConfigError
from e2mc.train.run import holds_run

Source = str | Path | dict | RunConfig | None


def _overrides(mode: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"optim__lr": 0.1, "addon.name": "vc"}`` -> ``{"optim.lr": 0.1, "addon.name": "vc", "mode": mode}``."""
    out = {k.replace("__", "."): v for k, v in overrides.items()}
    out["mode"] = mode
    return out


# An audio encoder continued without an optimiser or LR of the user's: AdamW at a small LR, as the
# wav2vec 2.0 / HuBERT papers train (the image methods' LARS at 0.2 took a tiny wav2vec 2.0 encoder's
# backbone RankMe from 5.5 to 1.1 in 6 steps, with E2MC or without; README "Speech and bioacoustic").
AUDIO_OPTIM = {"optim.name": "adamw", "optim.lr": 5e-5, "optim.weight_decay": 0.01}
# A vision transformer likewise: DINO, MoCo v3 and DINOv2 train ViTs with AdamW, and LARS at 0.2
# collapsed a DINO ViT-Tiny file in 2 steps (guard score 0.16; 0.80 with this default) and a MoCo v3
# ViT file in 3 (0.05; README). 1e-4 as the cifar10_dino_continue recipe, weight decay DINO's start, 0.04.
VIT_OPTIM = {"optim.name": "adamw", "optim.lr": 1e-4, "optim.weight_decay": 0.04}


def _is_vit(arch) -> bool:
    """``arch`` is a vision transformer (a timm ViT, e.g. DINO's, MoCo v3's or DINOv2's)."""
    name = str(arch or "").removeprefix("timm:")
    return name.startswith(("vit_", "vit-", "deit", "eva", "beit"))  # DINOv2's timm names are vit_*


def _audio_encoder(init: str) -> bool:
    """``init`` names an audio encoder: ``hf:``/``aves:``/``fairseq:``, a transformers folder of one, a
    fairseq checkpoint."""
    from e2mc.models.audio import is_audio_arch, is_hf_folder
    from e2mc.models.fairseq import looks_like

    return is_audio_arch(init) or (os.path.isdir(init) and is_hf_folder(init)) or looks_like(init)


def resolve_config(
    mode: str, source: Source, overrides: list[str] | dict[str, Any], auto_resume: bool = False
) -> RunConfig:
    """The ``RunConfig`` of a ``mode`` ("pretrain" / "continue") run, as the CLI and the API resolve it.

    ``source`` is a ``RunConfig``, a dict, a YAML path, a recipe name or None; ``overrides`` is a
    list of ``"key=value"`` strings (later ones win) or a dict with dotted keys. Beyond
    ``load_config(source, overrides)``:

    - ``auto_resume``: resume (``out.resume``) when ``out.dir`` already holds a run (its config.yaml
      or a checkpoint), else start it; an explicit ``out.resume`` wins. For jobs a scheduler requeues
      with the same call.
    - resuming without a ``source``: the run folder's own ``config.yaml``.
    - ``continue``: a ``model.init`` path must exist; without a ``source``, ``model.init`` is required
      and, without ``method.name``, the checkpoint's own method is continued
      (``checkpoints.checkpoint_method``); without ``data.dataset``, a run's own training data
      (``config.run_dataset``), and a file of another origin is refused.

    Only ``overrides`` are read for ``out.dir``, ``out.resume``, ``model.init`` and ``method.name``.
    A new run's ``data.dataset`` that names a local path is made absolute.

    Raises:
        ConfigError: no run folder for (auto-)resume, no run in it to resume, no checkpoint to
            continue, or the checkpoint file is missing (and every error of ``load_config``).
    """
    given = dict(overrides) if isinstance(overrides, dict) else dict(parse_override(o) for o in overrides)
    out, resume, extra = given.get("out.dir"), given.get("out.resume"), {}
    if auto_resume:
        if not out:
            raise ConfigError(f"--auto-resume needs the run folder: `e2mc {mode} ... --out RUN_DIR --auto-resume`")
        if resume is None and holds_run(out):  # an explicit out.resume wins
            resume = extra["out.resume"] = True
    if resume and source is None:
        if not out:
            raise ConfigError(f"--resume needs the run folder: `e2mc {mode} --out RUN_DIR --resume`")
        source = os.path.join(out, "config.yaml")
        if not os.path.isfile(source):
            raise ConfigError(
                f"--resume: {out} holds no run to resume (no config.yaml); check --out, "
                "or drop --resume to start a new run"
            )
    init = given.get("model.init")
    if mode == "continue" and init and not os.path.exists(str(init)) and ":" not in str(init):
        raise ConfigError(
            f"checkpoint {init} not found; give the path of a .pth/.pt/.safetensors "
            "file or a name like vicreg:resnet50-full (`e2mc zoo`) or torchvision:resnet50"
        )
    if mode == "continue" and init and os.path.isfile(str(init)):  # a file that is no checkpoint: said first,
        from e2mc.models.checkpoints import check_header  # not after the data and the run folder are set up

        check_header(str(init))
    if mode == "continue" and source is None:
        if not init:
            raise ConfigError(
                "continue needs a checkpoint: `e2mc continue CHECKPOINT [--method ...]`, or a "
                "--recipe/--config that sets model.init"
            )
        from e2mc.models.checkpoints import checkpoint_facts

        need_method = given.get("method.name") is None
        need_optim = not any(k in given for k in ("optim.name", "optim.lr"))
        if need_optim and _audio_encoder(str(init)):
            extra.update(AUDIO_OPTIM)
            need_optim = False
        method = arch = None
        if need_method or need_optim:
            try:
                method, arch = checkpoint_facts(str(init))
            except CheckpointError:
                if need_method:
                    raise
        if need_method and method is not None:
            extra["method.name"] = method  # continue the checkpoint's own method
        if given.get("data.dataset") is None:  # a run of e2mc's goes on with its own data; else it must be named
            from e2mc.config import run_dataset

            own = run_dataset(str(init))
            if own is None:
                raise ConfigError(
                    "continue needs the data to continue on: --dataset (digits, cifar10, a folder, ...) or a "
                    "--recipe that sets data.dataset; only a run of e2mc's continues on its own training data by default"
                )
            extra["data.dataset"] = own
        if need_optim and _is_vit(given.get("model.arch") or arch):
            extra.update(VIT_OPTIM)
    if isinstance(overrides, dict):
        cfg = load_config(source, {**extra, **overrides})  # the caller's own keys win
    else:
        cfg = load_config(source, [f"{k}={v}" for k, v in extra.items()] + list(overrides))
    if not cfg.out.resume:  # a new run records where its data is, not how it was typed (resumed from anywhere)
        cfg.data.dataset = _absolute(cfg.data.dataset)
    return cfg


def _absolute(spec):
    """A local path as an absolute, normalised one (``../calls/`` -> ``/home/u/calls``), so the run
    resumes and its hints work from any directory; names (``cifar10``, ``hf:...``) as they are."""
    from e2mc.data.datasets import DATASET_NAMES

    text = str(spec or "")
    if not text or text.lower() in DATASET_NAMES or not os.path.exists(os.path.expanduser(text)):
        return spec
    return os.path.abspath(os.path.expanduser(text))


def build_config(mode: str, config_or_path: Source = None, *, auto_resume: bool = False, **overrides: Any) -> RunConfig:
    """Resolve a config for ``mode`` ("pretrain" / "continue") from a file/recipe/dict plus
    overrides (``__`` or dots for sections), as ``resolve_config`` describes."""
    return resolve_config(mode, config_or_path, _overrides(mode, overrides), auto_resume)


def pretrain(config_or_path: Source = None, *, auto_resume: bool = False, **overrides: Any) -> Path:
    """Pre-train from scratch (or from ``model.init``) and return the run folder.

    ``config_or_path``: a ``RunConfig``, a dict, a YAML path or a recipe name. Keyword overrides
    use ``__`` or dots for sections: ``pretrain("digits_vicreg_pretrain", train__epochs=1)``.
    ``out__resume=True`` continues the run in ``out__dir`` (with its own config.yaml when no
    ``config_or_path`` is given); ``auto_resume=True`` resumes it when ``out__dir`` already holds
    a run and starts it otherwise (``e2mc pretrain --auto-resume``).
    Raises :class:`~e2mc.errors.RunInterrupted` when SIGTERM/SIGINT stopped the run (a checkpoint
    is saved first; resume with ``out__resume=True``).
    """
    return _fit(build_config("pretrain", config_or_path, auto_resume=auto_resume, **overrides))


def continue_training(config_or_path: Source = None, *, auto_resume: bool = False, **overrides: Any) -> Path:
    """Continue pre-training a checkpoint (``model.init``) with the configured add-on; return the run folder.

    Without ``config_or_path`` the checkpoint's own method is continued unless ``method__name``
    says otherwise: ``continue_training(model__init="runs/start/checkpoints/last.pt", out__dir=...)``
    does what ``e2mc continue runs/start/checkpoints/last.pt --out ...`` does. ``out__resume`` and
    ``auto_resume`` work as in :func:`pretrain`.
    Defaults for continued training: constant LR, no LR warm-up; fresh heads (backbone-only
    checkpoints) are warmed up for ``train.head_warmup_steps`` with the backbone frozen.
    Raises :class:`~e2mc.errors.RunInterrupted` like :func:`pretrain`.
    """
    return _fit(build_config("continue", config_or_path, auto_resume=auto_resume, **overrides))


def _fit(cfg: RunConfig) -> Path:
    """Train; raise :class:`~e2mc.errors.RunInterrupted` if a signal stopped the run before its end."""
    from e2mc.errors import RunInterrupted
    from e2mc.train.loop import Trainer

    trainer = Trainer(cfg)
    run_dir = Path(trainer.fit())
    if trainer.stop_requested:
        raise RunInterrupted(run_dir, trainer.epoch, trainer.global_step)
    return run_dir
