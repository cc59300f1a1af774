"""Command-line sub-commands. Each module defines ``register(subparsers)``.

A module adds its parser(s) and sets ``func`` to a function ``(args) -> int``. Modules import
only argparse-level things at import time; heavy imports (torch, ...) happen inside ``func`` so
that ``e2mc --help`` is instant.
"""

COMMAND_MODULES = (
    "demo",
    "train",
    "evaluate",
    "inspect",
    "recipes",
    "tune",
)
