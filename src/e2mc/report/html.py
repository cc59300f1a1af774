"""``write_report``: Markdown + self-contained HTML (PNGs embedded as base64) + the PNG files."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from e2mc.errors import DataError
from e2mc.report import plots
from e2mc.train.run import read_metrics


def _accuracy_metrics(comparison) -> list[str]:
    """The accuracies of the difference plot (per-layer ones have their own curves)."""
    return [m for m in comparison.metrics() if "top1" in m and not m.endswith("_ci95") and "@" not in m]


def spectra_from(comparison, which: str = "backbone") -> dict[str, list[float]]:
    """Singular values per arm from the ``spectrum`` protocol (first checkpoint of each arm)."""
    out = {}
    for name, res in zip(comparison.names, comparison.results):
        spec = res[0].get("spectrum", {}) if res else {}
        if which in spec:
            out[name] = spec[which]
    return out


def marginals_from(comparison) -> dict[str, np.ndarray]:
    """Mapped-marginal samples (N, d) per arm from the ``entropy`` protocol, when present."""
    out = {}
    for name, res in zip(comparison.names, comparison.results):
        sample = res[0].get("entropy", {}).get("marginals_sample") if res else None
        if sample:
            out[name] = np.asarray(sample, dtype=float).T
    return out


def run_info(run_dir: Path, rows: list[dict]) -> dict:
    """What one run was, from its folder: seed and planned epochs (``config.yaml``), epochs and steps
    reached and wall time (first to last ``metrics.csv`` row, from the run's start when logged)."""
    import time

    import yaml

    cfg = {}
    if (run_dir / "config.yaml").is_file():
        try:
            cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        except yaml.YAMLError:
            cfg = {}
    train = cfg.get("train") or {}
    times = [t for t in (plots._num(r.get("wall_time")) for r in rows) if t is not None]
    started = (cfg.get("run_info") or {}).get("started")
    if times and isinstance(started, str):
        try:
            times.append(time.mktime(time.strptime(started, "%Y-%m-%dT%H:%M:%S")))
        except ValueError:
            pass
    epochs = [e for e in (plots._num(r.get("epoch")) for r in rows) if e is not None]
    steps = [e for e in (plots._num(r.get("step")) for r in rows) if e is not None]
    return {
        "seed": train.get("seed"),
        "epochs": int(max(epochs)) if epochs else None,
        "planned_epochs": train.get("epochs"),
        "steps": int(max(steps)) if steps else None,
        "addon": (cfg.get("addon") or {}).get("name"),
        "mode": cfg.get("mode"),
        "wall_time_s": round(max(times) - min(times), 1) if len(times) > 1 else None,
        "guard_checks": sum(1 for r in rows if r.get("guard_score")),
        "guard_events": _guard_events(run_dir),
    }


def _guard_events(run_dir: Path) -> list[dict]:
    """The collapse guard's events of a run (``guard_events.json``, written by e2mc.train.guard)."""
    import json

    try:
        events = json.loads((run_dir / "guard_events.json").read_text())
    except (OSError, ValueError):
        return []
    return [e for e in events if isinstance(e, dict)] if isinstance(events, list) else []


def guard_blocks(run_meta: Mapping[str, dict], arms: Mapping[str, str] | None = None) -> list[tuple[str, object]]:
    """The report's "Collapse guard" section: each event of each run (named by its arm when the
    comparison gave the run another name than its folder's), or one line saying none acted."""
    arms = arms or {}
    if not any(m.get("guard_checks") or m.get("guard_events") for m in run_meta.values()):
        return []  # runs without the guard (older e2mc, or train.guard.action=off)
    table = [["run", "step", "why", "restored (step)", "then"]]
    for n, m in run_meta.items():
        for e in m.get("guard_events") or []:
            then = e.get("action", "")
            if e.get("lr") is not None and then != "stopped":
                then += f" at lr {e['lr']:.3g}"
            name = f"{arms[n]} (`{n}`)" if arms.get(n, n) != n else f"`{n}`"
            table.append([name, str(e.get("step", "")), e.get("reason", ""), str(e.get("restored_step", "")), then])
    if len(table) == 1:
        checks = sum(m.get("guard_checks") or 0 for m in run_meta.values())
        return [("h2", "Collapse guard"), ("p", f"The collapse guard scored {checks} checks and never acted.")]
    text = (
        "The collapse guard (`train.guard`) restored a run's best checkpoint when its label-free probe score "
        "dropped (or its loss was not finite); each event:"
    )
    return [("h2", "Collapse guard"), ("p", text), ("table", table)]


def guard_lines(comparison) -> list[str]:
    """One line per run of ``comparison`` whose collapse guard acted (`e2mc compare` prints them)."""
    out = []
    for arm, run in _runs_of(comparison):
        events = _guard_events(run)
        if events:
            last = events[-1]
            out.append(
                f"collapse guard: arm {arm} ({run}): {len(events)} event(s), the last at step {last.get('step')}: "
                f"{last.get('reason', '')}; {last.get('action', '')} (report.md, section 'Collapse guard')"
            )
    return out


def _runs_of(comparison) -> list[tuple[str, Path]]:
    """(arm, run folder) for each checkpoint of the comparison that lies in a run folder with metrics.csv."""
    out = []
    for arm, cks in zip(comparison.names, comparison.checkpoints):
        for ck in cks:
            run = Path(ck).parent.parent
            if Path(ck).parent.name == "checkpoints" and (run / "metrics.csv").is_file():
                out.append((arm, run))
    return out


HOW_TO_READ = [
    "**n**: how many values a cell averages — the arm's checkpoints (one per training seed); in rows "
    "marked † (one checkpoint per arm) the evaluation seeds of a seeded protocol instead.",
    "**mean ± std (n)**: the sample standard deviation (ddof=1) over those n values; with n = 1 there is no std.",
    "**Differences** (last columns, and the plot): each arm minus the first arm, with a 95% "
    "Student-t interval; *paired* when both arms ran the same training seeds, *Welch* otherwise. "
    'An interval that contains 0 means no detectable difference at this n, not "no effect"; '
    "n = 1 gives no interval, and so does the same difference with every seed (no spread to estimate from).",
    "**Accuracies** (kNN@k, linear probe, few-shot, semi-supervised) are test-set top-1 in %; "
    "differences in accuracy points.",
    "**Label-free metrics**: RankMe (effective rank of the embeddings, higher: less collapsed), "
    "entropy (E2MC's mean marginal entropy of the mapped projector outputs, nats, at most 0) and its "
    "covariance term: they show whether the add-on did what it optimises; only accuracies show "
    "whether it helped.",
]


def write_report(
    out_dir,
    comparison=None,
    runs: Sequence[str | os.PathLike] = (),
    spectra: Mapping[str, Sequence[float]] | None = None,
    marginals: Mapping[str, np.ndarray] | None = None,
    title: str = "e2mc report",
    headline: dict | None = None,
    wall_times: Mapping[str, float] | None = None,
) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and PNG plots into ``out_dir``; return their paths.

    This is the one report writer: ``e2mc compare --out``, ``e2mc report`` and the demo call it.

    Args:
        comparison: a :class:`e2mc.evaluation.compare.ComparisonResult` (or None).
        runs: run folders holding ``metrics.csv`` (training curves and the runs table). Default:
            the run folders the comparison's checkpoints lie in (``RUN/checkpoints/*.pt``).
        spectra: name -> singular values (default: from the comparison's ``spectrum`` protocol).
        marginals: name -> (N, d) mapped values (default: from the ``entropy`` protocol).
        headline: the verdict shown on top (default: ``comparison.headline``, else
            :func:`e2mc.evaluation.compare.headline`).
        wall_times: stage -> seconds, shown under the headline (default: ``comparison.wall_time_s``).
    """
    from e2mc.evaluation.compare import headline as compute_headline
    from e2mc.evaluation.stats import fmt_number
    from e2mc.fileio import atomic_write_text
    from e2mc.train.run import write_error

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    known = {str(run.resolve()): arm for arm, run in _runs_of(comparison)} if comparison is not None else {}
    run_dirs = [Path(r) for r in runs] or ([Path(p) for p in dict.fromkeys(known)] if known else [])
    run_rows, run_arm, run_meta = {}, {}, {}
    for r in run_dirs:
        csv_path = r / "metrics.csv" if r.is_dir() else r
        if not csv_path.is_file():
            raise DataError(f"no metrics.csv in {r}; pass run folders written by `e2mc pretrain/continue`")
        folder = csv_path.parent
        name = folder.name if folder.name not in run_rows else str(folder)
        run_rows[name] = read_metrics(csv_path)
        run_arm[name] = known.get(str(folder.resolve()), folder.name)
        run_meta[name] = run_info(folder, run_rows[name])
    if comparison is None and not run_rows:
        raise DataError("nothing to report: pass a comparison JSON and/or run folders")
    head = headline
    if comparison is not None:
        wall_times = wall_times or comparison.wall_time_s
        spectra = spectra if spectra is not None else spectra_from(comparison)
        marginals = marginals if marginals is not None else marginals_from(comparison)
        head = head or comparison.headline or compute_headline(comparison)
        order = {a: i for i, a in enumerate(comparison.names)}  # arms in table order: same hues as the table
        run_rows = dict(sorted(run_rows.items(), key=lambda kv: order.get(run_arm[kv[0]], len(order))))
    labels = {
        n: (f"{run_arm[n]}, seed {run_meta[n]['seed']}" if run_meta[n]["seed"] is not None else n) for n in run_rows
    }
    figures: list[tuple[str, Path]] = []

    def add(caption: str, p: Path | None) -> None:
        if p is not None:
            figures.append((caption, p))

    # continued runs count their steps from 0 again: their curves are not drawn over a pre-training's
    curves = (
        {n: r for n, r in run_rows.items() if run_meta[n]["mode"] != "pretrain"}
        if any(m["mode"] == "continue" for m in run_meta.values())
        else run_rows
    )
    left_out = [n for n in run_rows if n not in curves]
    add(
        "Loss terms and label-free metrics over training (colour: arm; shade: seed)"
        + (f"; pre-training runs not drawn: {', '.join(f'`{n}`' for n in left_out)}" if left_out else ""),
        plots.plot_training_curves(curves, out / "training.png", arms=run_arm, labels=labels),
    )
    if comparison is not None:
        add(
            f"Accuracy: each arm minus `{comparison.names[0]}` in points, with its 95% interval (zero line: no "
            "difference)",
            plots.plot_accuracy(comparison.names, _accuracy_metrics(comparison), comparison.rows, out / "accuracy.png"),
        )
        add(
            "Per layer (`--layers`): one curve per protocol, its metric against the layer, one line per arm "
            "(mean over the arm's checkpoints, bars: std)",
            plots.plot_layers(comparison.names, comparison.rows, out / "layers.png"),
        )
        add(
            "Risk decomposition (`decompose`): each arm's linear-probe test error (black tick) as the stacked sum "
            "of approximation, usability, probe and encoder generalisation, in % (the arm's mean; the table has "
            "each component's paired interval)",
            plots.plot_decomposition(comparison.names, comparison.rows, out / "decomposition.png"),
        )
    add("Singular-value spectrum (log scale)", plots.plot_spectra(spectra or {}, out / "spectrum.png"))
    add("Histograms of mapped projector marginals", plots.plot_marginals(marginals or {}, out / "marginals.png"))

    # blocks rendered both as Markdown and as HTML: (kind, payload)
    blocks: list[tuple[str, object]] = [("h1", title)]
    if head is not None and head.get("text"):
        blocks.append(("headline", head["text"]))
    if wall_times:
        blocks.append(
            (
                "p",
                "Wall time: "
                + ", ".join(
                    f"{k.replace('_', ' ')} {fmt_number(float(v), 0 if v >= 10 else 1)} s"
                    for k, v in wall_times.items()
                    if v is not None
                )
                + ".",
            )
        )
    elif run_rows and any(m["wall_time_s"] is not None for m in run_meta.values()):
        total = sum(m["wall_time_s"] or 0 for m in run_meta.values())
        blocks.append(("p", f"Wall time: {len(run_rows)} training runs, {fmt_number(total, 0)} s in all (see Runs)."))
    blocks += [("h2", "How to read this"), ("ul", HOW_TO_READ)]
    if comparison is not None:
        blocks += [("h2", "Comparison"), ("md", comparison.to_markdown())]
        blocks += [
            ("p", "Arms:"),
            (
                "ul",
                [
                    f"`{n}`: " + ", ".join(f"`{c}`" for c in cks)
                    for n, cks in zip(comparison.names, comparison.checkpoints)
                ],
            ),
        ]
    if run_rows:
        table = [["run", "arm", "seed", "epochs", "steps", "wall time (s)"]]
        for n, m in run_meta.items():
            ep = "" if m["epochs"] is None else str(m["epochs"])
            if m["planned_epochs"] is not None and m["epochs"] is not None and m["epochs"] != m["planned_epochs"]:
                ep += f" of {m['planned_epochs']}"
            wall = "" if m["wall_time_s"] is None else fmt_number(m["wall_time_s"], 1 if m["wall_time_s"] < 100 else 0)
            table.append(
                [
                    f"`{n}`",
                    run_arm[n],
                    "" if m["seed"] is None else str(m["seed"]),
                    ep,
                    "" if m["steps"] is None else str(m["steps"]),
                    wall,
                ]
            )
        blocks += [
            ("h2", "Runs"),
            (
                "p",
                "Each training run: its arm, training seed, epochs and optimiser steps "
                "reached, and wall time from its start to its last logged row.",
            ),
            ("table", table),
        ]
    blocks += guard_blocks(run_meta, run_arm)
    blocks += [("h2", "Figures")] + [("figure", (c, p)) for c, p in figures]
    atomic_write_text(out / "report.md", _render_md(blocks), error=write_error)
    atomic_write_text(out / "report.html", _render_html(blocks, title), error=write_error)
    paths = {"markdown": out / "report.md", "html": out / "report.html"}
    paths.update({p.stem: p for _, p in figures})
    return paths


HEADLINE_CSS = ".headline{font-size:1.15em;background:#eef5ff;border-left:4px solid #2a6ebb;padding:.6em 1em}"


def headline_html(text: str) -> str:
    """The verdict box every e2mc HTML report opens with (the comparison report, tune.html)."""
    return f"<p class='headline' id='headline'>{_inline(text)}</p>"


def _inline(text: str) -> str:
    """HTML-escape and render Markdown's `code` and **bold** / *italic* spans."""
    import re

    t = html.escape(text, quote=False)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", t)
    return re.sub(r"\*([^*]+)\*", r"<i>\1</i>", t)


def _render_md(blocks) -> str:
    md = []
    for kind, x in blocks:
        if kind == "h1":
            md += [f"# {x}", ""]
        elif kind == "h2":
            md += [f"## {x}", ""]
        elif kind == "headline":
            md += [f"**{x}**", ""]
        elif kind == "p":
            md += [x, ""]
        elif kind == "ul":
            md += [f"- {i}" for i in x] + [""]
        elif kind == "md":  # ends with its own newline (benchmarks/reproduce/restat.py rewrites it in place)
            md += [x]
        elif kind == "table":
            md += ["| " + " | ".join(r) + " |" for r in x[:1]] + ["|" + "---|" * len(x[0])]
            md += ["| " + " | ".join(r) + " |" for r in x[1:]] + [""]
        elif kind == "figure":
            caption, p = x
            md += [f"![{caption}]({p.name})", ""]
    return "\n".join(md)


def _render_html(blocks, title: str) -> str:
    body = []
    for kind, x in blocks:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(x)}</{kind}>")
        elif kind == "headline":
            body.append(headline_html(x))
        elif kind == "p":
            body.append(f"<p>{_inline(x)}</p>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in x) + "</ul>")
        elif kind == "md":
            body.append(_md_to_html(x))
        elif kind == "table":
            body.append(
                "<table><tr>"
                + "".join(f"<th>{_inline(c)}</th>" for c in x[0])
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in x[1:])
                + "</table>"
            )
        elif kind == "figure":
            caption, p = x
            b64 = base64.b64encode(p.read_bytes()).decode()
            body.append(
                f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{b64}'/>"
                f"<figcaption>{_inline(caption)}</figcaption></figure>"
            )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}table{border-collapse:"
        "collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;font-size:13px}img{max-width:100%}"
        + HEADLINE_CSS
        + "li{margin:.2em 0}code{font-size:90%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )


def _md_to_html(md: str) -> str:
    """Minimal Markdown -> HTML for paragraphs and pipe tables (what ``to_markdown`` writes)."""
    parts, table = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                table.append([_inline(c.strip()) for c in line.strip("|").split("|")])
            continue
        if table:
            head, *rest = table
            parts.append(
                "<table><tr>"
                + "".join(f"<th>{c}</th>" for c in head)
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rest)
                + "</table>"
            )
            table = []
        if line.strip():
            parts.append(f"<p>{_inline(line)}</p>")
    return "\n".join(parts)
