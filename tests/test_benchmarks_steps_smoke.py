"""benchmarks/bench_steps.py runs end to end at smoke sizes for each case (ViT/DINO, audio/VICReg):
the seeded first steps of the Trainer and of the bare loop from the same weights must give the same
loss (else the script exits 1), and its Markdown table is written. No timing is asserted."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("case", ["vit", "audio"])
def test_bench_steps_smoke(tmp_path, case):
    if case == "audio":
        pytest.importorskip("transformers")
        pytest.importorskip("soundfile")
    out = tmp_path / "bench.md"
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    )
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_steps.py"), "--case", case, "--smoke", "--threads", "1"]
    p = subprocess.run([*cmd, "--out", str(out)], env=env, capture_output=True, text=True, timeout=240, check=False)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    text = out.read_text()
    assert "(equal: the two loops do the same work)" in text
    assert re.search(r"median of the per-pair ratios: \*\*[0-9.]+%\*\*", text)
    assert re.search(r"load average [0-9.]+ / [0-9.]+ / [0-9.]+ \(1 / 5 / 15 min\) at the start", text)
    want = "DINO head 32-16-64 + EMA teacher" if case == "vit" else "VICReg projector 128-128-128"
    assert want in text and "`nice -n 5 python benchmarks/bench_steps.py --case " + case in text
