"""Recompute the statistics of stored ``arms.py`` results with the current ``e2mc.evaluation.stats``
(no training, no evaluation: only the per-seed values that ``results.json`` and ``comparison.json``
hold), and rewrite ``results.json``, ``table.md``, ``comparison.json`` and the comparison table in
``report/report.md`` / ``report/report.html`` (the figures are kept as they are: the training runs
they were drawn from need not exist any more). Prints every table line that changed.

    python -m benchmarks.reproduce.restat benchmarks/results/cifar10_vicreg benchmarks/results/cifar10_vicreg_select
"""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path

from benchmarks.reproduce import results as R
from benchmarks.reproduce.common import read_json, write_json


def _resummarise(res: dict) -> None:
    arms, refs = res["arms"], res["reference"]
    for mets in arms.values():
        for row in mets.values():
            s = R.summarize(row["values"])
            row.update(mean=s.mean, std=s.std, n=s.n)
    for lab, mets in arms.items():
        ref = refs.get(lab)
        for m, row in mets.items():
            rr = arms.get(ref, {}).get(m) if ref is not None and ref != lab else None
            row["diff"] = (
                None
                if rr is None
                else R.difference(dict(zip(rr["seeds"], rr["values"])), dict(zip(row["seeds"], row["values"])))
            )
    if res.get("selection"):
        sel = res["selection"]
        res["selection"] = R.select_best(arms, res["arm_of"], "e2mc", sel["criterion"])


def _title_and_notes(table_md: str) -> tuple[str, list[str]]:
    lines = table_md.splitlines()
    title = lines[0][2:] if lines and lines[0].startswith("# ") else ""
    body = lines[2:] if title else lines
    end = next(i for i, ln in enumerate(body) if ln.startswith("Mean ± std"))
    return title, [ln for ln in body[:end] if ln.strip()]


def _replace_between(text: str, start: str, end: str, new: str) -> str:
    i = text.index(start) + len(start)
    j = text.index(end, i)
    return text[:i] + new + text[j:]


def restat(folder: str | Path, log=print) -> list[str]:
    """Recompute one results folder in place; return the changed table lines (``-old`` / ``+new``)."""
    from e2mc.evaluation.compare import ComparisonResult, build_rows
    from e2mc.report.html import _md_to_html

    folder = Path(folder)
    res = read_json(folder / "results.json")
    _resummarise(res)
    write_json(folder / "results.json", res)
    old_table = (folder / "table.md").read_text()
    title, notes = _title_and_notes(old_table)
    table = R.to_markdown(res["arms"], title=title, notes=notes)
    (folder / "table.md").write_text(table)
    changed = [
        f"{folder}/table.md: {ln}"
        for ln in difflib.unified_diff(old_table.splitlines(), table.splitlines(), lineterm="", n=0)
        if ln[:1] in "+-" and not ln.startswith(("+++", "---"))
    ]
    comp_path = folder / "comparison.json"
    if comp_path.is_file():
        comp = ComparisonResult.from_json(str(comp_path))
        # arms.py lists each label's results in the order of its sorted training seeds
        comp.train_seeds = [sorted(next(iter(res["arms"][lab].values()))["seeds"]) for lab in comp.names]
        comp.rows = build_rows(comp.names, comp.results, comp.train_seeds)
        comp.to_json(comp_path)
        md_path, html_path = folder / "report" / "report.md", folder / "report" / "report.html"
        if md_path.is_file():
            old_md = md_path.read_text()
            new_md = _replace_between(old_md, "## Comparison\n\n", "Arms:", comp.to_markdown() + "\n")
            md_path.write_text(new_md)
            changed += [
                f"{md_path}: {ln}"
                for ln in difflib.unified_diff(old_md.splitlines(), new_md.splitlines(), lineterm="", n=0)
                if ln[:1] in "+-" and not ln.startswith(("+++", "---"))
            ]
        if html_path.is_file():
            html = html_path.read_text()
            end = "<p>Arms:</p>" if "<p>Arms:</p>" in html else "<figure>"  # reports since issue 15 list arms, runs
            html_path.write_text(_replace_between(html, "<h2>Comparison</h2>", end, _md_to_html(comp.to_markdown())))
    for ln in changed:
        log(ln)
    return changed


def main(argv=None) -> list[str]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+")
    args = ap.parse_args(argv)
    return [ln for f in args.folders for ln in restat(f)]


if __name__ == "__main__":
    main()
