"""``e2mc tune`` stopped by SIGTERM or SIGINT at any stage (scoring a probe, training one) ends with ONE line
that names the stage and gives ONE resume command (the same in both stages), exit 3 as every
stopped run, no traceback; rerunning that command resumes and ends where an uninterrupted tune
ends. The signal is sent when the child reports the stage (a line on stderr), never after a delay."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import e2mc
from tests.conftest import tiny_digits_start

SPACE = {
    "addons": ["none", "e2mc"],
    "e2mc": {"entropy_weight": [10], "cov_weight": [1, 1000]},
    "lr": [None],
    "epochs": 1,
    "set": {"optim.batch_size": 64, "train.probe_size": 0, "train.log_every": 1000},
}
CHILD = Path(__file__).with_name("tune_child.py")


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune_signals")
    ckpt = tiny_digits_start(root)
    (root / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return root, ckpt


def _args(root, ckpt, out):
    return [ckpt, "--dataset", "digits", "--out", out, "--space", root / "space.yaml", "--recipe", "digits_vicreg_e2mc"] + [
        "--holdout", "120", "--train-images", "192", "--workers", "1", "--select", "heldout",
    ]  # fmt: skip


def _tune(stage, argv, sig=signal.SIGTERM):
    """Run the child; send ``sig`` when it reports ``stage``; ``(exit code, stderr)``."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2] / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(CHILD), stage, *map(str, argv)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    err = []
    for line in proc.stderr:
        err.append(line)
        if line.strip() == f"at:{stage}":
            proc.send_signal(sig)
            break
    rest_out, rest_err = proc.communicate(timeout=300)
    return proc.returncode, "".join(err) + rest_err


def _stopped(code, err, words):
    assert code == 3 and "Traceback" not in err, (code, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith("e2mc tune: tune stopped by " + words), last
    assert "--resume" not in err, err  # one way to resume: the tune's own command
    return last.split("to resume, rerun the same command: ", 1)[1]


def test_sigterm_while_scoring_then_while_training_resumes_to_the_same_result(tmp_path, start):
    root, ckpt = start
    out = tmp_path / "out"
    argv = _args(root, ckpt, out)
    code, err = _tune("score", argv)
    again_scoring = _stopped(code, err, "SIGTERM while scoring probe ")
    assert str(out) in err.strip().splitlines()[-1]
    code, err = _tune("train", argv, sig=signal.SIGINT)  # Ctrl-C: the same
    again_training = _stopped(code, err, "SIGINT while training probe ")
    assert again_scoring == again_training and again_scoring.startswith("e2mc tune ")
    assert "the probe's checkpoint is saved" in err  # the trainer's stop line, without advice of its own
    code, err = _tune("none", argv)
    assert code == 0, err
    got = json.loads((out / "tune.json").read_text())
    spec = e2mc.TuneSpec(
        str(ckpt),
        "digits",
        out=tmp_path / "ref",
        space=SPACE,
        recipe="digits_vicreg_e2mc",
        holdout=120,
        train_images=192,
        workers=1,
    )
    ref = e2mc.tune(spec, log=lambda *a: None)
    assert [r["scores"] for r in got["rungs"]] == [r["scores"] for r in ref["rungs"]]
    assert got["chosen"]["label"] == ref["chosen"]["label"]


def test_a_stopped_caller_stops_its_worker_processes():
    """A signal in the parent of ``run_in_processes`` (here KeyboardInterrupt, raised as the first
    job ends) stops the running workers (SIGTERM: a probe's trainer saves and stops) instead of
    waiting for them: without that, this call would wait 300 s for the second job."""
    import time

    from e2mc.workers import run_in_processes

    def on_done(i, result):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_in_processes(time.sleep, [0, 300], workers=2, on_done=on_done)
