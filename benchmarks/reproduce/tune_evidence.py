"""Issue 14's evidence: successive halving vs the full grid of one `e2mc tune` folder.

Reads ``tune_sh.json`` (the default, cheapest schedule) and ``tune_full.json`` (``--budget full``)
that the commands in ``benchmarks/results/cifar10_vicreg_tune/README.md`` copy out of the tune
folder, and writes ``summary.md``: whether successive halving chose the full grid's best probe
(by held-out kNN@20 at the full epochs), at what fraction of the full grid's cost, and the rank
the halving's choice has in the full grid.

    python -m benchmarks.reproduce.tune_evidence benchmarks/results/cifar10_vicreg_tune
    python -m benchmarks.reproduce.tune_evidence benchmarks/results/cifar10_vicreg_tune --partial TUNE_OUT
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
    lines.append(
        f"Successive halving (eta {sh['eta']}, {len(sh['schedule'])} rungs): chose `{sh['chosen']['label']}`, "
        f"trained {c['trained_epochs']:.3g} epochs of probe data = {100 * c['fraction_of_full_grid']:.1f}% of "
        f"the full grid's {c['full_grid_epochs']:.3g}."
    )
    if not full_path.is_file():
        lines += ["", "The full grid has not finished yet (see README.md for the command)."]
        return "\n".join(lines) + "\n"
    full = json.loads(full_path.read_text())
    ranked = [p["label"] for p in full["probes"]]
    best = ranked[0]
    pos = ranked.index(sh["chosen"]["label"]) + 1
    score = {p["label"]: p["score"] for p in full["probes"]}
    n_hold, p_best = full["heldout"]["held_out"], score[best]
    se = (p_best * (1 - p_best) / n_hold) ** 0.5
    lines += [
        f"Full grid (every probe to {full['schedule'][0]['epochs']:.3g} epochs): best `{best}` "
        f"(held-out kNN@20 {100 * score[best]:.2f}%).",
        "",
        f"**Successive halving {'found' if pos == 1 else 'did not find'} the full grid's best**: its choice "
        f"ranks {pos} of {len(ranked)} in the full grid (held-out kNN@20 {100 * score[sh['chosen']['label']]:.2f}%, "
        f"{100 * (score[sh['chosen']['label']] - score[best]):+.2f} points vs the best), at "
        f"{100 * c['fraction_of_full_grid']:.1f}% of the full grid's cost "
        f"({'<=' if c['fraction_of_full_grid'] <= 1 / 3 else '>'} 1/3).",
        "",
        "Full-grid ranking (held-out kNN@20 %, 2 epochs): "
        + ", ".join(f"`{lab}` {100 * score[lab]:.2f}" for lab in ranked)
        + ".",
        "",
        f"For scale: the binomial standard error of one accuracy near {100 * p_best:.1f}% on the "
        f"{n_hold:,} held-out images is {100 * se:.2f} points; the whole grid spans "
        f"{100 * (score[best] - score[ranked[-1]]):.2f} points, the start scores {100 * full['start']['knn_top1_k20']:.2f}%.",
    ]
    return "\n".join(lines) + "\n"


def partial(tune_out: Path) -> str:
    """What the probes of an unfinished tune folder hold so far (``probes/*/probe.json``)."""
    rows = []
    for f in sorted(tune_out.glob("probes/*/probe.json")):
        r = json.loads(f.read_text())
        for steps, m in sorted(r["scores"].items(), key=lambda kv: int(kv[0])):
            rows.append(
                f"| {r['label']} | {steps} | {100 * m.get('knn_top1_k20', float('nan')):.2f} | "
                f"{100 * m.get('linear_top1', float('nan')):.2f} | {m.get('rankme', float('nan')):.4g} | "
                f"{m.get('entropy', float('nan')):.4g} | {m.get('lidar', float('nan')):.4g} | "
                f"{m.get('alpha_req', float('nan')):.4g} | {r['train_seconds']:.0f} | {r['eval_seconds']:.0f} |"
            )
        if not r["scores"]:
            rows.append(
                f"| {r['label']} | (trained to {r['steps']}, not scored yet) | | | | | | | "
                f"{r['train_seconds']:.0f} | {r['eval_seconds']:.0f} |"
            )
    start = tune_out / "start.json"
    head = ["# Probes finished so far (unfinished tune)", ""]
    if start.is_file():
        m = json.loads(start.read_text())["metrics"]
        head.append(
            f"Start on the held-out part: kNN@20 {100 * m['knn_top1_k20']:.2f}%, linear "
            f"{100 * m['linear_top1']:.2f}%, RankMe {m['rankme']:.4g}, entropy {m['entropy']:.4g}, "
            f"LiDAR {m['lidar']:.4g}, alpha-ReQ {m['alpha_req']:.4g}."
        )
    return (
        "\n".join(
            head
            + [
                "",
                "| probe | steps | kNN@20 % | linear % | RankMe | entropy | LiDAR | alpha-ReQ | train s | eval s |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            + rows
        )
        + "\n"
    )


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    if len(sys.argv) > 3 and sys.argv[2] == "--partial":
        text = partial(Path(sys.argv[3]))
        (folder / "partial.md").write_text(text)
        print(text)
        sys.exit(0)
    text = summarise(folder)
    (folder / "summary.md").write_text(text)
    print(text)
