"""The fault-probe harness (benchmarks/faults.py) judges outcomes correctly (no subprocesses here)."""

import collections

import torch

from benchmarks import faults
from benchmarks.faults import CLEAR, LOST, OK, TRACE, WRONG, Proc, bad_checkpoints, bad_logs, verdict

ERR = "e2mc pretrain: error: optim.lr=nan is out of range; give a finite number > 0 and <= 1000\n"


def test_probe_list_covers_every_category():
    cats = collections.Counter(c for _, c, _, _ in faults.PROBES)
    assert sum(cats.values()) >= 110
    assert set(cats) == {
        "checkpoint",
        "crash",
        "divergence",
        "data",
        "config",
        "fs",
        "concurrency",
        "cache",
        "world",
        "files",
    }
    names = [n for n, *_ in faults.PROBES]
    assert len(names) == len(set(names))


def test_verdicts():
    assert verdict(Proc(2, "", ERR), "error")[0] == CLEAR
    assert verdict(Proc(0, "run\n", ""), "ok")[0] == OK
    assert verdict(Proc(0, "run\n", ""), "error")[0] == LOST  # a bad input accepted: misreported work
    assert verdict(Proc(1, "", "Traceback (most recent call last):\n  ...\nOSError: x\n"), "error")[0] == TRACE
    assert verdict(Proc(2, "", "Traceback (most recent call last):\n" + ERR), "error")[0] == TRACE
    assert verdict(Proc(-9, "", ""), "ok|error")[0] == TRACE
    assert verdict(Proc(2, "", ERR), "ok")[0] == WRONG
    hint = "e2mc x: error: Weights only load failed. Re-running `torch.load` with `weights_only` set to `False`\n"
    assert verdict(Proc(2, "", hint), "error")[0] == WRONG
    assert verdict(Proc(3, "", "interrupted\n"), "stop+ok")[0] == OK
    assert verdict(Proc(0, "", ""), "ok", lost=["last.pt gone"])[0] == LOST


def test_state_checks(tmp_path):
    ck = tmp_path / "run" / "checkpoints"
    ck.mkdir(parents=True)
    torch.save({"model": {"w": torch.ones(3)}}, ck / "good.pt")
    assert bad_checkpoints(tmp_path) == []
    torch.save({"model": {"w": torch.tensor([1.0, float("inf")])}}, ck / "epoch_0001.pt")
    (ck / "last.pt").write_bytes(b"junk")
    bad = bad_checkpoints(tmp_path)
    assert bad[0] == "run/checkpoints/epoch_0001.pt holds NaN/Inf" and len(bad) == 2
    assert bad[1].startswith("run/checkpoints/last.pt unreadable")
    assert bad_checkpoints(tmp_path, planted={str(ck / "last.pt"), str(ck / "epoch_0001.pt")}) == []
    log = tmp_path / "run" / "metrics.csv"
    log.write_text("step,phase,loss\n1,train,2.0\n2,train,1.5\n")
    assert bad_logs(tmp_path) == []
    log.write_text("step,phase,loss\n1,train,2.0\n2,train,1.5\n2,train,1.4\n")
    assert "duplicate" in bad_logs(tmp_path)[0]
    log.write_text("step,phase,loss\n1,train,2.0,7\n")
    assert "fields under 3 columns" in bad_logs(tmp_path)[0]
