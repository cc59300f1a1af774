"""The ``e2mc`` command line. The only place that parses arguments."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from e2mc import __version__
from e2mc.commands import COMMAND_MODULES, command_line
from e2mc.errors import E2MCError, RankStopped, RunInterrupted


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line that points at ``--help``."""

    def error(self, message: str):  # noqa: D102 - argparse API
        message = did_you_mean(message)
        see = f" See `{self.prog} --help`." if message.endswith("?") else f"; see `{self.prog} --help`"
        self.exit(2, f"{self.prog}: error: {message}{see}\n")


def did_you_mean(message: str) -> str:
    """argparse's "invalid choice" ``message`` with "did you mean 'X'?" added for a close choice.

    Python 3.14's ``suggest_on_error`` words its own suggestion ("maybe you meant"); a message
    that already has one is returned as it is, so every Python says it once."""
    import difflib
    import re

    found = re.search(r"invalid choice: '?([^'\s,]+)'?.*\(choose from (.*)\)", message)
    if not found or "maybe you meant" in message or "did you mean" in message:
        return message
    choices = [c.strip().strip("'\"") for c in found.group(2).split(",")]
    lower = {c.lower(): c for c in choices}  # case counts for nothing in how close a name is
    close = difflib.get_close_matches(found.group(1).lower(), list(lower), n=1, cutoff=0.6)
    return f"{message}; did you mean '{lower[close[0]]}'?" if close else message


_SAID: set = set()  # the warning texts this command has shown
_PYTHON_FORMAT = warnings.formatwarning


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """``warnings.formatwarning`` while a command runs: e2mc's own warnings as one line each,
    ``e2mc: warning: ...``, each text once (Python's default adds the file, the line number and
    the source line, and repeats a text raised from two call sites); other libraries' warnings keep
    Python's format. Recording (``catch_warnings(record=True)``, ``pytest.warns``) is unaffected."""
    if f"{os.sep}e2mc{os.sep}" not in str(filename):
        return _PYTHON_FORMAT(message, category, filename, lineno, line)
    text = f"e2mc: warning: {message}\n"
    if text in _SAID:
        return ""
    _SAID.add(text)
    return text


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available sub-command registered."""
    parser = _Parser(
        prog="e2mc",
        description="Continue pre-training self-supervised encoders with E2MC, evaluate, compare, export.",
    )
    parser.add_argument("--version", action="version", version=f"e2mc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"e2mc.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 user error, 3 interrupted run, 4 stopped by the
    collapse guard, 130 ^C)."""
    saved, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    _SAID.clear()
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = saved


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    args._argv = argv  # what a command's own resume advice repeats (commands.command_line)
    try:
        return int(args.func(args) or 0)
    except RankStopped as exc:  # torchrun: another rank died; every surviving rank says so in one line
        print(f"e2mc {args.command}: {exc}: resume with `{command_line(argv, resume=True)}`", file=sys.stderr)
        if "TORCHELASTIC_RUN_ID" in os.environ:  # skip the exit-time teardown of the broken group (it can abort)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(3)
        return 3
    except RunInterrupted as exc:  # a signal stopped a run started through the Python API (the demo, tune)
        print(f"e2mc {args.command}: {exc}; to resume, rerun the same command: {command_line(argv)}", file=sys.stderr)
        return 3
    except E2MCError as exc:
        print(f"e2mc {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:  # an allocation failure outside the steps that name their batch
        from e2mc.errors import is_out_of_memory

        if not is_out_of_memory(exc):
            raise
        lower = "the batch size (--batch-size)" if hasattr(args, "batch_size") else "the batch size"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        print(f"e2mc {args.command}: error: out of memory ({first}); lower {lower} or the image size", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"e2mc {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `e2mc ... | head`: the reader left; not an error of ours
        try:  # silence the flush at exit (Python's documented recipe)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a real file (tests, notebooks)
            pass
        return 0
    except OSError as exc:  # the file system said no (full, read-only, permissions, a path under /proc)
        where = f" {exc.filename}" if exc.filename else ""
        print(
            f"e2mc {args.command}: error: cannot use{where}: {exc.strerror or exc} (check the path, its "
            "permissions and free space, or choose another location)",
            file=sys.stderr,
        )
        return 2


def run() -> None:
    """The ``e2mc`` console script."""
    code = main()
    dist = sys.modules.get("e2mc.train.distributed")  # loaded only by commands that train
    if dist is not None:
        dist.exit_if_process_group(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
