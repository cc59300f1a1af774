"""Two gloo processes on CPU must reproduce one process on the concatenated batch.

Each rank computes the loss on its slice (the criteria gather with gradient); the input
gradient reaching rank r's slice is world_size x the single-process gradient (every rank
back-propagates the same global loss and the gather's backward sums them), and DDP-style
averaging of a shared parameter's gradient gives exactly the single-process gradient.
"""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from e2mc.criteria import E2MC, SwAVLoss, VICRegLoss

WS = 2


def _data():
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(12, 5, generator=g) for _ in range(2)]
    w = torch.randn(5, 6, generator=g)
    scores = [torch.rand(12, 7, generator=g) * 2 - 1 for _ in range(3)]
    uneven = [torch.randn(12, 4, generator=g) for _ in range(2)]
    return x, w, scores, uneven


def _run(crit, x_views, w, kind):
    """Loss, input grads and parameter grad for views = x @ w (or raw scores for SwAV)."""
    xs = [v.clone().requires_grad_() for v in x_views]
    wp = w.clone().requires_grad_()
    views = xs if kind == "raw" else [v @ wp for v in xs]
    loss = crit(views)["loss"]
    loss.backward()
    return loss.detach(), [v.grad for v in xs], wp.grad


def _cases():
    return {
        "e2mc": (lambda: E2MC(transform="gaussian_cdf", m=2), "param"),
        "vicreg": (lambda: VICRegLoss(), "param"),
        "swav_gather": (lambda: SwAVLoss(gather=True, crops_for_assign=(0, 1)), "raw"),
        "swav_local": (lambda: SwAVLoss(gather=False, crops_for_assign=(0, 1)), "raw"),
    }


def _worker(rank, path):
    dist.init_process_group("gloo", init_method=f"file://{path}/store", rank=rank, world_size=WS)
    x, w, scores, uneven = _data()
    results = {}
    for name, (make, kind) in _cases().items():
        inputs = scores if name.startswith("swav") else x
        local = [v[rank * 6 : (rank + 1) * 6] for v in inputs]
        loss, gx, gw = _run(make(), local, w, kind)
        if gw is not None:
            dist.all_reduce(gw)
            gw /= WS  # what DDP does
        results[name] = (loss, gx, gw)
    cut = [0, 5, 12]  # uneven per-rank sizes: 5 and 7 rows
    local = [v[cut[rank] : cut[rank + 1]] for v in uneven]
    results["uneven"] = _run(E2MC(m=3), local, w, "raw")
    torch.save(results, os.path.join(path, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_processes_match_one_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WS, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WS)]
    x, w, scores, uneven = _data()
    for name, (make, kind) in _cases().items():
        inputs = scores if name.startswith("swav") else x
        loss, gx, gw = _run(make(), inputs, w, kind)
        if name == "swav_local":  # local losses: their mean is the global loss
            torch.testing.assert_close(sum(r[name][0] for r in res) / WS, loss, rtol=1e-5, atol=1e-6)
        else:
            for r in range(WS):
                torch.testing.assert_close(res[r][name][0], loss, rtol=1e-5, atol=1e-6)
        for r in range(WS):
            for v in range(len(gx)):
                torch.testing.assert_close(
                    res[r][name][1][v],
                    WS * gx[v][r * 6 : (r + 1) * 6],
                    rtol=1e-4,
                    atol=1e-6,
                    msg=f"{name} input grad rank {r} view {v}",
                )
            if gw is not None:
                torch.testing.assert_close(res[r][name][2], gw, rtol=1e-4, atol=1e-6)
    loss, gx, _ = _run(E2MC(m=3), uneven, w, "raw")
    cut = [0, 5, 12]
    for r in range(WS):
        torch.testing.assert_close(res[r]["uneven"][0], loss, rtol=1e-5, atol=1e-6)
        for v in range(2):
            torch.testing.assert_close(res[r]["uneven"][1][v], WS * gx[v][cut[r] : cut[r + 1]], rtol=1e-4, atol=1e-6)
