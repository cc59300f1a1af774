"""SSL methods: one class per method, one file per class, one registry (``METHODS``).

A method says which heads and views it needs, builds its base criterion from the run config,
and computes its base loss from the model output; everything shared (the add-on, the single
gather of the views under ``torchrun``, the loss-term bookkeeping, the head check) lives in
:class:`~e2mc.methods.base.Method`. The training loop asks the method for its criterion, calls
``compute_loss`` on the model output, and lets the method touch the model around the step (SwAV
normalises its prototypes before the forward and freezes them for the first iterations of *this*
run).

Adding a method (e.g. Barlow Twins): a file here with a ``Method`` subclass decorated with
``@register``, its import below, its heads in ``e2mc.models.heads.METHOD_HEADS``, its views in
``e2mc.data.views.RECIPES`` and its config fields in ``e2mc.config.MethodConfig``.

Example:
    >>> from e2mc.config import load_config
    >>> cfg = load_config(None, ["method.name=vicreg"])
    >>> m = METHODS["vicreg"]
    >>> crit = m.build_criterion(cfg)
    >>> m.heads
    ('projector',)
"""

from e2mc.methods import simsiam, swav, vicreg  # noqa: F401  (each registers its method)
from e2mc.methods.base import LOSS_TERMS, METHODS, Method, get_method, register

__all__ = ["LOSS_TERMS", "METHODS", "Method", "get_method", "register"]
