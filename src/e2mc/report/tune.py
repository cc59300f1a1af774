"""The ``e2mc tune`` section of the report: tune.md rendered as self-contained HTML."""

from __future__ import annotations

import html
import os
from pathlib import Path

from e2mc.fileio import atomic_write_text
from e2mc.report.html import _md_to_html


def tune_section(markdown: str) -> str:
    """HTML body of a tune.md text (headings, paragraphs, pipe tables)."""
    parts, block = [], []
    for line in markdown.splitlines() + [""]:
        level = len(line) - len(line.lstrip("#"))
        if 0 < level <= 3 and line[level : level + 1] == " ":
            if block:
                parts.append(_md_to_html("\n".join(block)))
                block = []
            parts.append(f"<h{level}>{html.escape(line[level + 1 :].strip())}</h{level}>")
        else:
            block.append(line)
    if block:
        parts.append(_md_to_html("\n".join(block)))
    return "\n".join(parts)


def write_tune_html(path: str | os.PathLike, markdown: str, title: str = "e2mc tune") -> Path:
    """Write ``markdown`` (tune.md) as one HTML file (atomic); return its path."""
    path = Path(path)
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;font-size:13px}"
    )
    text = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{tune_section(markdown)}</body></html>"
    )
    return atomic_write_text(path, text)
