"""Issue 14's evidence: successive halving vs the full grid of one `e2mc tune` folder.

Reads ``tune_sh.json`` (the default, cheapest schedule) and ``tune_full.json`` (``--budget full``)
that the commands in ``benchmarks/results/cifar10_vicreg_tune/README.md`` copy out of the tune
folder, and writes ``summary.md``: whether successive halving chose the full grid's best probe
(by held-out kNN@20 at the full epochs), at what fraction of the full grid's cost, and the rank
the halving's choice has in the full grid.

    python -m benchmarks.reproduce.tune_evidence benchmarks/results/cifar10_vicreg_tune
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def summarise(folder: Path) -> str:
    sh = json.loads((folder / "tune_sh.json").read_text())
    lines = ["# Successive halving vs the full grid", ""]
    full_path = folder / "tune_full.json"
    c = sh["cost"]
    lines.append(f"Successive halving (eta {sh['eta']}, {len(sh['schedule'])} rungs): chose `{sh['chosen']['label']}`, "
                 f"trained {c['trained_epochs']:.3g} epochs of probe data = {100 * c['fraction_of_full_grid']:.1f}% of "
                 f"the full grid's {c['full_grid_epochs']:.3g}.")
    if not full_path.is_file():
        lines += ["", "The full grid has not finished yet (see README.md for the command)."]
        return "\n".join(lines) + "\n"
    full = json.loads(full_path.read_text())
    ranked = [p["label"] for p in full["probes"]]
    best = ranked[0]
    pos = ranked.index(sh["chosen"]["label"]) + 1
    score = {p["label"]: p["score"] for p in full["probes"]}
    lines += [f"Full grid (every probe to {full['schedule'][0]['epochs']:.3g} epochs): best `{best}` "
              f"(held-out kNN@20 {100 * score[best]:.2f}%).", "",
              f"**Successive halving {'found' if pos == 1 else 'did not find'} the full grid's best**: its choice "
              f"ranks {pos} of {len(ranked)} in the full grid (held-out kNN@20 {100 * score[sh['chosen']['label']]:.2f}%, "
              f"{100 * (score[sh['chosen']['label']] - score[best]):+.2f} points vs the best), at "
              f"{100 * c['fraction_of_full_grid']:.1f}% of the full grid's cost "
              f"({'<=' if c['fraction_of_full_grid'] <= 1 / 3 else '>'} 1/3).", "",
              "Full-grid ranking (held-out kNN@20 %, 2 epochs): "
              + ", ".join(f"`{lab}` {100 * score[lab]:.2f}" for lab in ranked) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    text = summarise(folder)
    (folder / "summary.md").write_text(text)
    print(text)
