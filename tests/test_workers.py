"""e2mc.workers.run_in_processes: results in job order, in this process or in spawned ones, with
the worker's torch thread count and E2MC errors carried back with their message."""

import pytest

from e2mc.errors import ConfigError, E2MCError
from e2mc.workers import run_in_processes


def _square_and_threads(x):
    import torch

    if x < 0:
        raise ConfigError(f"negative input {x}: pass a non-negative number")
    return x * x, torch.get_num_threads()


def test_in_process_keeps_order_and_reports_each():
    seen = []
    out = run_in_processes(_square_and_threads, [3, 1, 2], workers=1, on_done=lambda i, r: seen.append(i))
    assert [r[0] for r in out] == [9, 1, 4] and seen == [0, 1, 2]


def test_spawned_processes_keep_order_threads_and_errors():
    jobs, seen = [3, 1, 2, -4, 5], {}
    with pytest.raises(E2MCError, match=r"job -4 failed: ConfigError: negative input -4: pass a non-negative"):
        run_in_processes(
            _square_and_threads,
            jobs,
            workers=2,
            threads=1,
            label=lambda j: f"job {j}",
            on_done=lambda i, r: seen.setdefault(i, r),
        )
    # each job that finished before the error reported its own result, from a 1-thread worker
    assert seen and all(r == (jobs[i] ** 2, 1) for i, r in seen.items())
