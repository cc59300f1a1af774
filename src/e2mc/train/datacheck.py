"""A resume on the data its checkpoint was trained on (issue 28): the training data's fingerprint
(:mod:`e2mc.data.fingerprint`) is kept in every checkpoint (``RunState.data_fingerprint``) and
compared when a run resumes.

- ``check_data(dataset, found, cfg, log) -> (fingerprint, change)``: ``change`` is None when the
  data is the same (or the checkpoint is older than fingerprints: a note is logged); a change
  raises ``ConfigError`` naming it unless ``train.allow_data_change``, which is then used up
  (set back to false, so the run's config does not keep it);
- ``reschedule(run, state, change, train, batches_per_epoch, warmup, log) -> total_steps``: after
  such a resume (``run``: the restored ``RunState``), the LR schedule of the run's real length
  (steps done + the remaining epochs at the new data's batches per epoch), applied to the
  restored scheduler and optimiser, and a log line saying so.
"""

from __future__ import annotations

from typing import Any, Callable

from e2mc.data.fingerprint import describe_change, fingerprint
from e2mc.errors import ConfigError


def check_data(dataset: Any, found: tuple | None, cfg: Any, log: Callable[[str], None]) -> tuple[dict, str | None]:
    """The training data's fingerprint, and what changed since the checkpoint ``found`` (see module)."""
    data_print = fingerprint(dataset)
    if found is None:
        return data_print, None
    stored = found[1].get("data_fingerprint")
    if not stored:
        log(
            f"note: {found[0]} predates training-data fingerprints (an older e2mc): resuming without "
            "checking that the training data is unchanged"
        )
        return data_print, None
    change = describe_change(stored, data_print)
    if change is None:
        return data_print, None
    if not cfg.train.allow_data_change:
        raise ConfigError(
            f"train data changed since the checkpoint: {change}; resume with --allow-data-change "
            "(--set train.allow_data_change=true) to recompute the schedule, or restore the data"
        )
    cfg.train.allow_data_change = False  # a one-time permission: not kept in the run's config
    return data_print, change


def reschedule(
    run: Any, state: dict, change: str, train: Any, batches_per_epoch: int, warmup: int, log: Callable[[str], None]
) -> int:
    """After a resume on changed data: the LR schedule of this run's steps, not the stored one.

    ``run``: the restored ``RunState`` (its progress, scheduler and optimiser); ``state``: the
    checkpoint dict; ``train``: the ``train`` config; ``warmup``: the schedule's warm-up steps.
    Returns the run's total steps (the progress bar's and the ETA's).
    """
    stored = ((state.get("scheduler") or {}).get("lr_lambdas") or [{}])[0].get("total_steps")
    left = (train.epochs - run.epoch) * batches_per_epoch - run.step_in_epoch
    total = run.global_step + left
    total = max(min(total, train.max_steps) if train.max_steps else total, run.global_step + 1)
    sched = run.scheduler
    if sched is not None:
        for fn in sched.lr_lambdas:  # the restored factors carry the checkpoint's length: replace it
            fn.total_steps, fn.warmup_steps = total, warmup
        for group, base, fn in zip(run.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
            group["lr"] = base * fn(sched.last_epoch)
    log(
        f"train data changed since the checkpoint: {change} (--allow-data-change): LR schedule recomputed "
        f"for {total} steps (the checkpoint's was {stored if stored is not None else 'unknown'})"
    )
    return total
