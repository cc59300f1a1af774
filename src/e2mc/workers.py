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


def _init_worker(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def _call(fn: Callable[[Any], Any], job: Any) -> Any:
    try:
        return fn(job)
    except E2MCError as exc:
        return {_ERROR: f"{type(exc).__name__}: {exc}"}


def _check(result: Any, label: str) -> Any:
    if isinstance(result, dict) and _ERROR in result:
        raise E2MCError(f"{label} failed: {result[_ERROR]}")
    return result


def run_in_processes(
    fn: Callable[[Any], Any],
    jobs: list,
    workers: int = 1,
    threads: int | None = None,
    on_done: Callable[[int, Any], None] | None = None,
    label: Callable[[Any], str] = lambda job: str(job),
) -> list:
    """``[fn(job) for job in jobs]``, in ``workers`` spawned processes when ``workers > 1``.

    Example:
        >>> run_in_processes(abs, [-2, 3, -4])
        [2, 3, 4]
    """
    jobs = list(jobs)
    results: list = [None] * len(jobs)
    if workers <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            results[i] = fn(job)
            if on_done is not None:
                on_done(i, results[i])
        return results
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=mp.get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads,),
    ) as pool:
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
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return results
