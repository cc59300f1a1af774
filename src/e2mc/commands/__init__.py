"""Command-line sub-commands. Each module defines ``register(subparsers)``.

A module adds its parser(s) and sets ``func`` to a function ``(args) -> int``. Modules import
only argparse-level things at import time; heavy imports (torch, ...) happen inside ``func`` so
that ``e2mc --help`` is instant.
"""

import argparse

COMMAND_MODULES = (
    "demo",
    "train",
    "evaluate",
    "inspect",
    "recipes",
    "tune",
    "zoo",
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's and the examples' line breaks; appends ``(default: X)`` to an option's
    help unless the help already names its default or there is none (None, False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or "default" in text
            or default in (None, False, argparse.SUPPRESS)
            or (isinstance(default, (list, tuple)) and not default)
            or isinstance(action, (argparse._HelpAction, argparse._VersionAction))
        ):
            return text
        if isinstance(default, (list, tuple)):
            default = ",".join(map(str, default))
        return f"{text} (default: {str(default).replace('%', '%%')})"


def add_command(sub, name: str, *, help: str, description: str, examples: list[str], **kwargs):
    """A sub-command parser with a description and an ``examples:`` epilog (``e2mc NAME --help``)."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    return sub.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=HelpFormatter, **kwargs
    )
