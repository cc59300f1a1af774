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


def _accuracy_metrics(comparison) -> list[str]:
    return [m for m in comparison.metrics() if "top1" in m and not m.endswith("_ci95")]


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


def write_report(out_dir, comparison=None, runs: Sequence[str | os.PathLike] = (),
                 spectra: Mapping[str, Sequence[float]] | None = None,
                 marginals: Mapping[str, np.ndarray] | None = None, title: str = "e2mc report") -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and PNG plots into ``out_dir``; return their paths.

    Args:
        comparison: a :class:`e2mc.evaluate.compare.ComparisonResult` (or None).
        runs: run folders holding ``metrics.csv`` (training curves).
        spectra: name -> singular values (default: from the comparison's ``spectrum`` protocol).
        marginals: name -> (N, d) mapped values (default: from the ``entropy`` protocol).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_rows = {}
    for r in runs:
        csv_path = Path(r) / "metrics.csv" if Path(r).is_dir() else Path(r)
        if not csv_path.is_file():
            raise DataError(f"no metrics.csv in {r}; pass run folders written by `e2mc pretrain/continue`")
        run_rows[Path(r).name if Path(r).is_dir() else csv_path.parent.name] = plots.read_metrics_csv(csv_path)
    if comparison is None and not run_rows:
        raise DataError("nothing to report: pass a comparison JSON and/or run folders")
    if comparison is not None:
        spectra = spectra if spectra is not None else spectra_from(comparison)
        marginals = marginals if marginals is not None else marginals_from(comparison)
    figures: list[tuple[str, Path]] = []

    def add(caption: str, p: Path | None) -> None:
        if p is not None:
            figures.append((caption, p))

    add("Loss terms and label-free metrics over training", plots.plot_training_curves(run_rows, out / "training.png"))
    if comparison is not None:
        add("Accuracy per arm (95% t-intervals where n > 1)",
            plots.plot_accuracy(comparison.names, _accuracy_metrics(comparison), comparison.rows, out / "accuracy.png"))
    add("Singular-value spectrum (log scale)", plots.plot_spectra(spectra or {}, out / "spectrum.png"))
    add("Histograms of mapped projector marginals", plots.plot_marginals(marginals or {}, out / "marginals.png"))

    md = [f"# {title}", ""]
    if comparison is not None:
        md += ["## Comparison", "", comparison.to_markdown(), "Arms:", ""]
        md += [f"- `{n}`: {', '.join(f'`{c}`' for c in cks)}" for n, cks in zip(comparison.names, comparison.checkpoints)]
        md += [""]
    if run_rows:
        md += ["## Runs", ""] + [f"- `{n}`: {len(rows)} logged rows" for n, rows in run_rows.items()] + [""]
    md += ["## Figures", ""] + [f"![{c}]({p.name})" + "\n" for c, p in figures]
    md_text = "\n".join(md)
    (out / "report.md").write_text(md_text)

    body = [f"<h1>{html.escape(title)}</h1>"]
    if comparison is not None:
        body += ["<h2>Comparison</h2>", _md_to_html(comparison.to_markdown())]
    for caption, p in figures:
        b64 = base64.b64encode(p.read_bytes()).decode()
        body.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{b64}'/>"
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;font-size:13px}img{max-width:100%}")
    (out / "report.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
                                     f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>")
    paths = {"markdown": out / "report.md", "html": out / "report.html"}
    paths.update({p.stem: p for _, p in figures})
    return paths


def _md_to_html(md: str) -> str:
    """Minimal Markdown -> HTML for paragraphs and pipe tables (what ``to_markdown`` writes)."""
    parts, table = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                table.append([html.escape(c.strip()) for c in line.strip("|").split("|")])
            continue
        if table:
            head, *rest = table
            parts.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rest) + "</table>")
            table = []
        if line.strip():
            parts.append(f"<p>{html.escape(line)}</p>")
    return "\n".join(parts)
