"""benchmarks/gpu/check.py runs end to end on CPU with --dry-run (tiny sizes, gloo) and writes its
Markdown result; the correctness checks (sort path, precision, DDP) must pass there too."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu_check.md"
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    )
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu" / "check.py"), "--dry-run", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    text = out.read_text()
    for title in (
        "a. CUDA sort path equals the CPU path",
        "b. bf16 and fp16 + GradScaler steps",
        "c. E2MC's share of a VICReg step",
        "d. Trainer throughput vs a bare loop",
        "e. 2-process DDP equivalence",
        "f. ViT-S/16 DINO Trainer throughput vs a bare loop",
    ):
        assert f"| {title} |" in text and f"## {title}" in text
    assert text.count("| PASS |") == 3 and text.count("RAN (dry run: no goal)") == 6  # table + sections (c, d, f)
    assert "FAIL" not in text and "| fp16 | 2 | True | True |" in text
    assert "loss step 2" in text and "gloo on CPU" in text
    assert "DINO head ({hidden: 32, bottleneck: 16, out: 64}) + EMA teacher" in text


def test_gpu_check_refuses_without_cuda(tmp_path):
    # CUDA hidden from the child, so the refusal is checked on GPU machines too
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu" / "check.py"), "--out", str(tmp_path / "x.md")],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src"), CUDA_VISIBLE_DEVICES=""),
    )
    assert p.returncode == 2 and "--dry-run" in p.stderr and not (tmp_path / "x.md").exists()
