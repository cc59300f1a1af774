"""Independent jobs (training runs, probes) in parallel worker processes.

``run_in_processes(fn, jobs, workers, threads)`` calls ``fn(job)`` for each job and returns the
results in job order: in this process, one after another, when ``workers <= 1`` (or for one job);
else in ``workers`` *spawned* processes, each limited to ``threads`` torch threads (small models
train faster as several one-thread processes than as one process with several threads).
``fn`` must be a module-level function and jobs and results picklable. An
:class:`~e2mc.errors.E2MCError` raised in a worker comes back as an ``E2MCError`` with the same
message (some subclasses take other constructor arguments and do not pickle). ``on_done(index,
result)`` is called in this process as each job finishes, e.g. for progress lines.
"""

from __future__ import annotations

from typing import Any, Callable

from e2mc.errors import E2MCError

_ERROR = "__e2mc_worker_error__"


def _init_worker(threads: int | None, warm: tuple[str, ...] = ()) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    import importlib

    for name in warm:
        importlib.import_module(name)


def _ready() -> bool:
    return True


def start_pool(workers: int, threads: int | None = None, warm: tuple[str, ...] = ()):
    """A pool of ``workers`` spawned processes, started now: each sets ``threads`` torch threads and
    imports the ``warm`` modules at once, so that a caller can overlap that start-up (seconds for
    torch) with its own work, then pass the pool to :func:`run_in_processes`. The caller shuts it
    down (``with start_pool(...) as pool:``)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(threads, warm)
    )
    for _ in range(workers):  # a worker is spawned per task submitted while none is idle
        pool.submit(_ready)
    return pool


def _call(fn: Callable[[Any], Any], job: Any) -> Any:
    try:
        return fn(job)
    except E2MCError as exc:
        return {_ERROR: f"{type(exc).__name__}: {exc}"}


def _check(result: Any, label: str) -> Any:
    if isinstance(result, dict) and _ERROR in result:
        raise E2MCError(f"{label} failed: {result[_ERROR]}")
    return result


def _stop_workers(pool) -> None:
    """SIGTERM to the pool's worker processes (a training run in one saves its checkpoint and stops),
    so that stopping the caller does not wait for the running jobs to finish."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):  # ProcessPoolExecutor's table
        if proc.is_alive():
            proc.terminate()


def run_in_processes(
    fn: Callable[[Any], Any],
    jobs: list,
    workers: int = 1,
    threads: int | None = None,
    on_done: Callable[[int, Any], None] | None = None,
    label: Callable[[Any], str] = lambda job: str(job),
    pool=None,
) -> list:
    """``[fn(job) for job in jobs]``, in ``workers`` spawned processes when ``workers > 1``
    (in ``pool``, from :func:`start_pool`, when given; its thread count then applies).

    Example:
        >>> run_in_processes(abs, [-2, 3, -4])
        [2, 3, 4]
    """
    jobs = list(jobs)
    results: list = [None] * len(jobs)
    if pool is None and (workers <= 1 or len(jobs) <= 1):
        for i, job in enumerate(jobs):
            results[i] = fn(job)
            if on_done is not None:
                on_done(i, results[i])
        return results
    from concurrent.futures import FIRST_COMPLETED, wait

    own = pool is None
    if own:
        pool = start_pool(min(workers, len(jobs)), threads)
    try:
        futures = {pool.submit(_call, fn, job): i for i, job in enumerate(jobs)}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in sorted(finished, key=futures.get):
                    i = futures[fut]
                    results[i] = _check(fut.result(), label(jobs[i]))
                    if on_done is not None:
                        on_done(i, results[i])
        except BaseException as exc:
            for fut in pending:
                fut.cancel()
            if own and not isinstance(exc, Exception):  # a signal stopped us: stop the workers too
                _stop_workers(pool)
            raise
    finally:
        if own:
            pool.shutdown()
    return results
