"""``e2mc tune``: search space, successive halving, held-out and label-free scoring, confirmation.

The function is ``e2mc.tune`` (``e2mc.tuning.api.tune``); this package is named ``tuning`` so that
the name ``e2mc.tune`` stays the function.
"""
