"""Load fairseq_official.py's files with e2mc and compare with fairseq's own outputs and configs.

Usage: fairseq_outputs.py OFFICIAL GENERATED (folders of ``<case>.pt`` / ``<case>.ref.pt``), run
with e2mc's Python (``PYTHONPATH=src``), no fairseq or omegaconf needed. For each case: e2mc's
transformers model loaded from the official file gives fairseq's ``extract_features`` output on
the same waveforms (max abs difference printed), and the configuration e2mc reads from the
official file (``args`` / ``cfg``, through its safe loader) equals the one it reads from the
generator's file.
"""

import sys
from pathlib import Path

import torch

from e2mc.models import fairseq

official, generated = Path(sys.argv[1]), Path(sys.argv[2])
for ref_path in sorted(official.glob("*.ref.pt")):
    case = ref_path.name[: -len(".ref.pt")]
    ref = torch.load(ref_path, weights_only=True)
    model, info = fairseq.load(str(official / f"{case}.pt"), overrides={"mask_time_prob": 0.0})
    with torch.no_grad():
        y = model.eval()(ref["x"]).last_hidden_state
    diff = (y - ref["y"]).abs().max().item()
    a = fairseq.model_config(fairseq.read(str(official / f"{case}.pt")))
    b = fairseq.model_config(fairseq.read(str(generated / f"{case}.pt")))
    same = (
        "SAME"
        if a == b
        else f"DIFFER {[(k, a[1].get(k), b[1].get(k)) for k in set(a[1]) | set(b[1]) if a[1].get(k) != b[1].get(k)][:6]}"
    )
    print(
        f"{case}: max |e2mc - fairseq| = {diff:.2e} ({'OK' if diff < 1e-5 else 'MISMATCH'}); config read: {same}; {info['source']['notes']}"
    )
