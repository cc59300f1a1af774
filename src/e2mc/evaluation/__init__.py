"""Evaluation of frozen or fine-tuned encoders: cached features, kNN, linear probes, few-shot,
semi-supervised fine-tuning, label-free metrics, statistics over seeds and comparisons.

Submodules import lazily; ``e2mc.evaluation.api.evaluate`` (exported as ``e2mc.evaluate``) is the
one-call entry point.
"""
