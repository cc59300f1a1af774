"""Per-image kNN and linear-probe outcomes on the held-out part: the tune's private evaluation protocols.

``knn_outcomes`` is the ``knn`` protocol's kNN@``K`` (same cosine top-k search, temperature-weighted
votes, ``settings.knn.temperature``) that keeps, for every held-out image, whether it was classified
correctly, so probes can be compared image by image (``tuning.paired``). It is added to the
evaluation registry by :func:`ensure_protocol` in the process that tunes (and in each probe worker),
not at import, so ``e2mc evaluate``'s protocol list is unchanged. Its accuracy equals
``knn["top1_k20"]`` of the same features.

``linear_outcomes`` is the ``linear`` protocol itself (``evaluation.protocols.linear_result``: the
same settings, seed, penalty selection and refit; its result dict unchanged) plus ``correct``: the
refitted probe's per-image correctness on the held-out images. The tune scores it INSTEAD of
``linear``, so each probe's linear probe is fitted once; its ``top1`` is the accuracy of ``correct``.
"""

from __future__ import annotations

from e2mc.tuning.scoring import LINEAR_OUTCOMES, OUTCOMES, K

NAME = OUTCOMES
LINEAR = LINEAR_OUTCOMES


def knn_correct(train_x, train_y, test_x, test_y, k: int, temperature: float):
    """(n_test,) bool tensor: is each test row's temperature-weighted kNN@``k`` vote its label."""
    import torch

    from e2mc.evaluation.knn import check_labelled, knn_topk

    train_y, test_y, c = check_labelled(train_x, train_y, test_x, test_y, "kNN outcomes")
    k = min(int(k), train_x.shape[0])
    sim, idx = knn_topk(train_x, test_x, k)
    train_y, test_y = train_y.to(sim.device), test_y.to(sim.device)
    votes = torch.zeros(test_y.shape[0], c, dtype=torch.float32, device=sim.device)
    votes.scatter_add_(1, train_y[idx], (sim / temperature).exp())
    return votes.argmax(dim=1) == test_y


def _run(ctx) -> dict:
    from e2mc.tuning.paired import encode

    tr, te = ctx.train_f, ctx.test_f
    ok = knn_correct(tr["backbone"], tr.labels, te["backbone"], te.labels, K, ctx.settings.knn.temperature)
    return {"k": K, "correct": encode(ok.tolist()), "top1": float(ok.float().mean())}


def _run_linear(ctx) -> dict:
    import torch

    from e2mc.evaluation.protocols import linear_result
    from e2mc.tuning.paired import encode

    preds: dict = {}
    res = linear_result(ctx, predictions=preds)
    ok = preds["test"].cpu() == torch.as_tensor(ctx.test_f.labels).cpu().long()
    return {**res, "correct": encode(ok.tolist())}


def ensure_protocol() -> str:
    """Register ``knn_outcomes`` and ``linear_outcomes`` in ``e2mc.evaluation.protocols.PROTOCOLS``
    once; the kNN one's name."""
    from e2mc.evaluation import protocols

    if NAME not in protocols.PROTOCOLS:
        protocols.register(NAME, "per-image kNN@20 correctness (e2mc tune's paired scoring)", needs_train=True)(_run)
    if LINEAR not in protocols.PROTOCOLS:
        protocols.register(
            LINEAR,
            "linear probe with per-image correctness (e2mc tune's paired scoring)",
            needs_train=True,
            seeds="first",
        )(_run_linear)
    return NAME
