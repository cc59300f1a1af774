"""SSL methods: one file per method, one registry (``METHODS``).

A method file declares its heads, views, base criterion, add-on defaults, config options, own
state and hooks, how its model output is computed, and its official files: their adapters
(:mod:`e2mc.methods.adapter`, with their flat namings, :mod:`e2mc.methods.layout`) and the
published releases (:mod:`e2mc.methods.release`) (:class:`~e2mc.methods.base.Method`);
everything shared (the add-on, the single gather of the views under ``torchrun``, the loss-term
bookkeeping, the head check, head-size resolution) lives in the base class. The generic code
(config, model, views, trainer, run state, commands) reads only ``METHODS``.

Adding a method: a file here with a ``Method`` subclass decorated with ``@register``, and its
module name in ``_MODULES`` below (see docs/architecture.md, "Adding a method").

Importing this package imports no torch (the config and the CLI's choices read it).

Example:
    >>> from e2mc.config import load_config
    >>> cfg = load_config(None, ["method.name=vicreg"])
    >>> m = METHODS["vicreg"]
    >>> crit = m.build_criterion(cfg)
    >>> m.heads
    ('projector',)
"""

import importlib

from e2mc.methods.base import LOSS_TERMS, METHODS, Method, Option, StepContext, get_method, register

_MODULES = (
    "vicreg",
    "swav",
    "simsiam",
    "barlowtwins",
    "byol",
    "mocov3",
    "dino",
    "wav2vec2",
    "hubert",
)  # the registry lines: one module per method, in CLI order
for _name in _MODULES:
    importlib.import_module(f"e2mc.methods.{_name}")

DEFAULT_METHOD = next(iter(METHODS))  # the config's default method.name: the first registered

__all__ = ["DEFAULT_METHOD", "LOSS_TERMS", "METHODS", "Method", "Option", "StepContext", "get_method", "register"]
