"""The ``e2mc tune`` section of the report: tune.md rendered as self-contained HTML, opening with the
verdict in the comparison report's headline box, plus a plot of each probe's paired difference to
base-only with its 95% interval, per rung."""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

from e2mc.fileio import atomic_write_text
from e2mc.report.html import HEADLINE_CSS, _inline, _md_to_html, headline_html


def tune_section(markdown: str) -> str:
    """HTML body of a tune.md text (headings with their code spans, paragraphs, pipe tables)."""
    parts, block = [], []
    for line in markdown.splitlines() + [""]:
        level = len(line) - len(line.lstrip("#"))
        if 0 < level <= 3 and line[level : level + 1] == " ":
            if block:
                parts.append(_md_to_html("\n".join(block)))
                block = []
            parts.append(f"<h{level}>{_inline(line[level + 1 :].strip())}</h{level}>")
        else:
            block.append(line)
    if block:
        parts.append(_md_to_html("\n".join(block)))
    return "\n".join(parts)


def paired_points(rungs: list, reference: str | None) -> list[dict]:
    """One row per (rung, probe other than the reference) with an interval to base-only, in points."""
    rows = []
    for r in rungs:
        for lab in r.get("probes", []):
            iv = ((r.get("paired") or {}).get(lab) or {}).get("vs_base")
            if iv is not None and lab != reference:
                rows.append(
                    {"rung": r["rung"], "epochs": r["epochs"], "label": lab}
                    | {k: 100 * iv[k] for k in ("diff", "low", "high")}
                )
    return rows


def paired_figure_png(rungs: list, reference: str | None, mde: float | None = None) -> bytes | None:
    """PNG bytes: each probe's paired kNN@20 difference to base-only with its interval, one panel per
    rung (the minimum detectable difference shaded); None when there is nothing to plot."""
    rows = paired_points(rungs, reference)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({r["rung"] for r in rows})
    labels = list(dict.fromkeys(r["label"] for r in rows))
    fig, axes = plt.subplots(1, len(ks), figsize=(3.2 * len(ks) + 2, 0.9 + 0.35 * len(labels)), squeeze=False)
    for ax, k in zip(axes[0], ks):
        here = [r for r in rows if r["rung"] == k]
        ys = [labels.index(r["label"]) for r in here]
        colours = ["#2a8a2a" if r["low"] > 0 else "#b22222" if r["high"] < 0 else "#555555" for r in here]
        for y, r, c in zip(ys, here, colours):
            ax.errorbar(
                r["diff"], y, xerr=[[r["diff"] - r["low"]], [r["high"] - r["diff"]]], fmt="o", color=c, capsize=3
            )
        if mde:
            ax.axvspan(-100 * mde, 100 * mde, color="#dddddd", alpha=0.6, lw=0)
        ax.axvline(0.0, color="black", linewidth=1)
        ax.set_yticks(range(len(labels)), labels if k == ks[0] else [""] * len(labels), fontsize=8)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.set_title(f"rung {k}: {here[0]['epochs']:.3g} epochs", fontsize=9)
        ax.set_xlabel("kNN@20 minus base-only (points)", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Paired difference to base-only, 95% interval (grey band: +- the detectable difference)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_tune_html(
    path: str | os.PathLike, markdown: str, title: str = "e2mc tune", headline: str | None = None, figure=None
) -> Path:
    """Write ``markdown`` (tune.md) as one HTML file (atomic); return its path.

    ``headline``: the verdict, shown first in the headline box (its bold line in ``markdown`` is not
    repeated); ``figure``: PNG bytes embedded after it (:func:`paired_figure_png`).
    """
    path = Path(path)
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;font-size:13px}img{max-width:100%}" + HEADLINE_CSS
    )
    top = []
    if headline:
        markdown = "\n".join(line for line in markdown.splitlines() if line.strip() != f"**{headline}**")
        top.append(headline_html(headline))
    if figure:
        b64 = base64.b64encode(figure).decode()
        top.append(
            "<figure><img alt='paired differences to base-only per rung' "
            f"src='data:image/png;base64,{b64}'/><figcaption>Each probe's held-out kNN@20 minus base-only's on "
            "the same images, with its 95% interval, per rung.</figcaption></figure>"
        )
    body = tune_section(markdown)
    if top and body.startswith("<h1>"):  # the title stays first, the verdict right under it
        end = body.index("</h1>") + 5
        body = body[:end] + "".join(top) + body[end:]
    else:
        body = "".join(top) + body
    text = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{body}</body></html>"
    )
    return atomic_write_text(path, text)
