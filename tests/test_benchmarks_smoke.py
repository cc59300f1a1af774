"""benchmarks/bench_224.py runs end to end at smoke sizes (resnet_mini, 32 px, 8 JPEGs): the
loader over 0 and 1 workers, the Trainer's step and the bare loop (whose seeded first steps from
the same weights must give the same loss, else the script exits 1), and its Markdown table."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_224_smoke(tmp_path):
    out = tmp_path / "bench.md"
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    )
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_224.py"), "--smoke", "--threads", "1", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    text = out.read_text()
    assert "(equal: the two loops do the same work)" in text
    for w in (0, 1):  # one loader row per worker count, with a positive rate
        assert re.search(rf"^\| {w} \| [0-9.]*[1-9][0-9.]* \|", text, re.MULTILINE), text
    m = re.search(r"median of the per-pair ratios: \*\*([0-9.]+)%\*\*", text)
    assert m and float(m.group(1)) > 0
    peak = re.search(r"needs at this batch\): \*\*([0-9]+) MiB\*\*", text)
    assert peak and 100 < int(peak.group(1)) < 8000  # torch + a tiny model: hundreds of MiB
    assert "resnet_mini + expander 128-64-64-64" in text and "bf16 autocast" in text
