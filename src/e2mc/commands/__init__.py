"""Command-line sub-commands. Each module defines ``register(subparsers)``.

A module adds its parser(s) and sets ``func`` to a function ``(args) -> int``. Modules import
only argparse-level things at import time; heavy imports (torch, ...) happen inside ``func`` so
that ``e2mc --help`` is instant.
"""

import argparse
import os
import sys

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


def command_line(argv: list[str] | None, resume: bool = False) -> str:
    """This command as typed (under torchrun: the launcher's command line, which ends with ours),
    with ``--resume`` added when ``resume`` and neither ``--resume`` nor ``--auto-resume`` is in it."""
    import shlex

    args = sys.argv[1:] if argv is None else [str(a) for a in argv]
    extra = ["--resume"] if resume and not {"--resume", "--auto-resume"} & set(args) else []
    cmd = ["e2mc", *args]
    if "TORCHELASTIC_RUN_ID" in os.environ:
        try:  # the torchrun agent is our parent: its command line is what the user typed
            with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
                parent = [a.decode() for a in f.read().split(b"\0") if a]
        except OSError:
            parent = []
        runner = [i for i, a in enumerate(parent) if os.path.basename(a) == "torchrun" or a == "torch.distributed.run"]
        if runner and parent[len(parent) - len(args) :] == args:
            i = runner[0]
            cmd = (
                ["torchrun", *parent[i + 1 :]] if parent[i] != "torch.distributed.run" else ["python", *parent[i - 1 :]]
            )
        else:
            cmd = [*f"torchrun --nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', '?')} -m e2mc".split(), *args]
    return shlex.join(cmd + extra)
