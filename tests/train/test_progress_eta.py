"""Progress lines without a terminal (logs, the demo) say how far the run is and when it ends."""

import re
import time

from e2mc.train.loop import Trainer


def test_progress_lines_show_step_of_total_and_eta(tmp_path, tiny, capsys, monkeypatch):
    real = time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: 10 * real())  # a slower clock: ETAs of seconds
    Trainer(tiny(tmp_path / "run", "train.epochs=1", "train.max_steps=4", "train.probe_size=0")).fit()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[train]")]
    found = [re.search(r"step (\d+)/(\d+), ETA (\d+):(\d\d) loss \S+ lr \S+ (\d+) img/s", line) for line in lines]
    assert len(found) == 4 and all(found), lines
    steps = [int(m.group(1)) for m in found]
    assert steps == [1, 2, 3, 4] and {m.group(2) for m in found} == {"4"}
    for m in found:  # ETA = steps left x seconds per step = steps left x batch (64) / images per second
        eta, left, ips = 60 * int(m.group(3)) + int(m.group(4)), 4 - int(m.group(1)), int(m.group(5))
        assert left * 64 / (ips + 0.5) - 1 <= eta <= left * 64 / max(ips - 0.5, 1e-9) + 1, m.group(0)
    assert found[-1].group(3, 4) == ("0", "00")
