"""Evaluation of frozen or fine-tuned encoders: cached features, kNN, linear probes, few-shot,
semi-supervised fine-tuning, label-free metrics, statistics over seeds and comparisons.

Submodules import lazily; ``e2mc.evaluate.api.evaluate`` is the one-call entry point.
"""

import sys
import types


class _CallableModule(types.ModuleType):
    """Importing a submodule (``import e2mc.evaluate.knn``) binds this package to the attribute
    ``e2mc.evaluate``, shadowing the lazily exported function ``e2mc.evaluate(...)``. Making the
    package callable keeps ``e2mc.evaluate(checkpoint, dataset, ...)`` working either way."""

    def __call__(self, *args, **kwargs):
        from e2mc.evaluate.api import evaluate

        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
