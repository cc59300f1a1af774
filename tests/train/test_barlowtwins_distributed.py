"""Barlow Twins under 2 gloo processes equals 1 process on the concatenated batch, for every add-on:
the loss terms, the gradients at both steps, the weights after 2 steps, and the ``bn`` head's
running statistics (normalised with the global batch, as main.py's SyncBatchNorm; on CPU).

As tests/train/test_distributed_steps.py (whose ``Counter`` and ``run_case`` shape this test reuses):
the backbone's and the projector's BatchNorms become per-sample norms (each rank would otherwise
normalise only its half), deterministic views; the loss's own ``bn`` stays a ``BatchNorm1d``: the
criterion normalises the gathered batch, so it needs no such change. One step communicates 1
all_gather of both views, 1 all_reduce of their gradient and the stop/save flag; nothing is read
back to the host.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from e2mc.train.distributed import mirrored_views, per_sample_norms
from tests.train.test_distributed_steps import ADDONS, Counter, _close

WS, B = 2, 8


def norms_per_sample_but_the_loss_bn(model):
    per_sample_norms(model.backbone)
    per_sample_norms(model.projector)
    return model


def run(out, addon, batch):
    from e2mc.config import load_config
    from e2mc.train.loop import Trainer

    sets = [
        "data.dataset=digits",
        "data.image_size=8",
        "data.limit=64",
        "model.init=random:resnet_mini:8-16-32",
        "model.head_sizes={projector: [32, 16]}",
        f"optim.batch_size={batch}",
        "optim.lr=0.05",
        "optim.schedule=constant",
        "train.log_every=2",
        "train.probe_size=0",
        "train.max_steps=2",
        "train.tensorboard=false",
        "method.name=barlowtwins",
        "method.lambd=0.02",
        f"addon.name={addon}",
        f"out.dir={out}",
    ] + (["addon.m=3"] if addon == "e2mc" else [])
    t = Trainer(load_config(None, sets), model_fn=norms_per_sample_but_the_loss_bn, views_fn=mirrored_views, quiet=True)
    real_step, steps, counter = t.train_step, [], Counter()

    def step(images, **kw):
        counter.step += 1
        terms = real_step(images, **kw)
        grads = {n: p.grad.detach().clone() for n, p in t.model.named_parameters() if p.grad is not None}
        steps.append(({k: v.detach().clone() for k, v in terms.items()}, grads))
        return terms

    t.train_step, t.save, t._guard_check = step, counter.paused(t.save), counter.paused(t._guard_check)
    t.loader = counter.paused_loader(t.loader)
    counter.install()
    try:
        t.fit()
    finally:
        counter.uninstall()
    weights = {k: v.detach().clone() for k, v in t.model.state_dict().items()}
    return {"steps": steps, "weights": weights, "counts": counter.per_step(2)}


def _worker(rank, tmp):
    os.environ.update(WORLD_SIZE=str(WS), RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=WS)
    results = {addon: run(f"{tmp}/r_{addon}", addon, B) for addon in ADDONS}
    dist.destroy_process_group()
    os.environ["WORLD_SIZE"] = "1"
    for addon in ADDONS[rank::WS]:  # the single-process references, half per worker
        results[("one", addon)] = run(f"{tmp}/one_{addon}", addon, WS * B)
    torch.save(results, f"{tmp}/rank{rank}.pt")


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp_bt")
    mp.spawn(_worker, args=(str(tmp),), nprocs=WS, join=True)
    res = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WS)]
    one = {k[1]: v for r in res for k, v in r.items() if isinstance(k, tuple)}
    return {"ddp": [{k: v for k, v in r.items() if not isinstance(k, tuple)} for r in res], "one": one}


@pytest.mark.parametrize("addon", ADDONS)
def test_two_processes_equal_one_on_the_concatenated_batch(spawned, addon):
    one, ddp = spawned["one"][addon], [spawned["ddp"][r][addon] for r in range(WS)]
    assert len(one["steps"]) == len(ddp[0]["steps"]) == 2
    for s in range(2):
        ref_terms, ref_grads = one["steps"][s]
        assert float(ref_terms["base.off_diag"]) > 0 and float(ref_terms["base"]) > 0
        for k in ("loss", "base", "addon", "base.on_diag", "base.off_diag"):
            mean = sum(d["steps"][s][0][k] for d in ddp) / WS
            _close(mean, ref_terms[k], f"{addon} step {s + 1} {k}")
        for r in range(WS):
            grads = ddp[r]["steps"][s][1]
            assert sorted(grads) == sorted(ref_grads)
            for n in ref_grads:
                tol = dict(rtol=2e-4, atol=1e-6) if s == 0 else dict(rtol=2e-3, atol=2e-5)
                _close(grads[n], ref_grads[n], f"{addon} step {s + 1} grad {n} rank {r}", **tol)
    for r in range(WS):
        for n, w in one["weights"].items():
            _close(ddp[r]["weights"][n], w, f"{addon} weights {n} rank {r}", rtol=2e-3, atol=1e-5)
        # the loss's bn: global statistics, twice per step (once per view)
        assert int(ddp[r]["weights"]["bn.num_batches_tracked"]) == 4
        assert not torch.equal(ddp[r]["weights"]["bn.running_var"], torch.ones(16))


@pytest.mark.parametrize("addon", ADDONS)
def test_one_gather_and_no_host_read_per_step(spawned, addon):
    for r in range(WS):
        c1, c2 = (spawned["ddp"][r][addon]["counts"][s] for s in (1, 2))
        assert sorted(c1["collectives"]) == ["all_gather", "all_reduce", "all_reduce"], c1  # z, its gradient, flag
        assert len(c2["collectives"]) == 4, c2  # + the logged terms' mean
        assert c1["syncs"] == [] and c1["flag_syncs"] == c2["flag_syncs"] == ["tolist"]
    assert spawned["one"][addon]["counts"][1] == {"collectives": [], "syncs": [], "flag_syncs": []}
