"""``e2mc zoo``: the published models e2mc loads by name (``e2mc.models.zoo``)."""

from __future__ import annotations

import argparse

from e2mc.commands import add_command

COLUMNS = ("name", "method", "arch", "layout", "heads", "params", "size", "url")


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "zoo",
        help="list the official releases e2mc loads by name (vicreg:resnet50-full, ...)",
        description="List the official VICReg, SwAV and SimSiam releases e2mc knows, with URL, layout,\n"
        "architecture and size. Any command that takes a checkpoint takes these names: the file is\n"
        "downloaded once into torch hub's cache (<TORCH_HOME>/hub/checkpoints), resumed if cut, and its\n"
        "URL, path and sha256 are recorded in the load report. `--download NAME` only fetches it.",
        examples=[
            "e2mc zoo",
            "e2mc zoo --json",
            "e2mc zoo --download vicreg:resnet50-full   # then e.g. e2mc continue vicreg:resnet50-full ...",
        ],
    )
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.add_argument("--download", metavar="NAME", default=None, help="download NAME into the cache and print its path")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the zoo (or download one entry)."""
    import json

    from e2mc.models import zoo

    if args.download:
        path, source = zoo.fetch(args.download)
        print(f"{path}\nurl    : {source['url']}\nsha256 : {source['sha256']}\nsize   : {source['size']:,} bytes")
        return 0
    rows = zoo.table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0

    def mark(r):
        return " *" if r["cached"] else (" -" if r["loadable"] != "yes" else "")

    shown = [{c: r[c] + mark(r) if c == "name" else r[c] for c in COLUMNS} for r in rows]
    width = {c: max(len(c), *(len(r[c]) for r in shown)) for c in COLUMNS}
    print("  ".join(c.upper().ljust(width[c]) for c in COLUMNS).rstrip())
    for r in shown:
        print("  ".join(r[c].ljust(width[c]) for c in COLUMNS).rstrip())
    print(
        "\n* in the cache already. heads: the file holds the method's heads (else a backbone alone).\n"
        "params: as published. size: the READMEs publish none; the download checks the server's length."
    )
    refused: dict = {}
    for r in rows:
        if r["loadable"] != "yes":
            refused.setdefault(r["loadable"][4:], []).append(r["name"])
    for why, names in refused.items():
        print(f"- listed only, not loadable ({why}): {', '.join(names)}")
    print("Sources: " + "; ".join(zoo.SOURCES.values()))
    return 0
