"""The ``e2mc`` command line. The only place that parses arguments."""

from __future__ import annotations

import argparse
import importlib
import sys

from e2mc import __version__
from e2mc.commands import COMMAND_MODULES
from e2mc.errors import E2MCError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="e2mc",
        description="Continue pre-training self-supervised encoders with E2MC, evaluate, compare, export.",
    )
    parser.add_argument("--version", action="version", version=f"e2mc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"e2mc.commands.{name}")
        except ModuleNotFoundError as exc:  # a command not built yet must not break the others
            if exc.name != f"e2mc.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except E2MCError as exc:
        print(f"e2mc {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"e2mc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
