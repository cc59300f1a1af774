"""``kill -9`` at seeded points of a tiny run (from outside while it trains, and in the middle of
checkpoint writes), then resume: the final weights and metrics.csv equal an uninterrupted run's,
and no temp file is left. Every kill is triggered by an event, never by a sleep."""

import random
import signal

from e2mc.train.loop import Trainer
from e2mc.train.run import read_metrics

from .conftest import SETS, child, comparable, same_weights, tiny_config, wait_for_line, weights


def _leftovers(run):
    return [p.name for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if p.name.endswith(".tmp")]


def test_kill_nine_anywhere_then_resume_equals_an_uninterrupted_run(tmp_path):
    ref = tmp_path / "ref"
    Trainer(tiny_config(ref), quiet=True).fit()
    run, rng = tmp_path / "run", random.Random(11)
    # seeded kill points: a real kill -9 from outside while training runs (the child stops at the
    # start of a seeded step of epoch 0, before the first checkpoint, says "paused", and the test
    # kills it on that line: the same point on any machine), then faults inside the child: mid
    # checkpoint write (a part of the bytes in the temp file) and right after a checkpoint file is
    # in place (last.pt newer than the epoch file). Each launch costs ~5 s of importing torch, so
    # the list stays short.
    faults = [
        f"pause:{rng.randint(2, 4)}:{tmp_path / 'never'}",  # the file never comes: the kill ends the pause
        f"write:{rng.randint(1, 3)}:{rng.uniform(0.1, 0.9):.2f}",
        f"replace:{rng.randint(1, 2)}",
        "none",
    ]
    argv = ["pretrain", *SETS, "--out", run, "--auto-resume", "--set", "out.overwrite=true"]
    killed, logs = 0, []  # (fault, exit code, stderr tail) per launch
    for fault in faults:
        if fault.startswith("pause:"):
            proc = child(fault, *argv, wait=False)
            try:
                wait_for_line(proc, "paused")
                assert not (run / "checkpoints" / "last.pt").exists()  # inside epoch 0, before any checkpoint
                proc.kill()  # kill -9 from outside
            finally:
                if proc.poll() is None:
                    proc.kill()
                _, err = proc.communicate(timeout=60)
            rc = proc.returncode
            assert "[train] epoch 0 step 1/" in err, err[-2000:]  # killed while training, after a step
        else:
            res = child(fault, *argv)
            rc, err = res.returncode, res.stderr
        logs.append((fault, rc, err))
        killed += rc == -signal.SIGKILL
        assert rc in (0, -signal.SIGKILL), logs
        if rc == 0:
            break
    assert killed == len(faults) - 1 and logs[-1][1] == 0, logs  # every fault hit, then the run ended
    assert "removed 1 temp file(s) left by an interrupted write" in logs[2][2], logs  # the mid-write kill's
    assert not _leftovers(run)
    assert same_weights(weights(ref), weights(run))
    assert same_weights(weights(ref, "epoch_0003.pt"), weights(run, "epoch_0003.pt"))
    got, want = read_metrics(run / "metrics.csv"), read_metrics(ref / "metrics.csv")
    assert comparable(got) == comparable(want)
    assert [r["step"] for r in got if r["phase"] == "train"] == [str(s) for s in range(1, 13)]
