"""Lean distributed steps: what one training step communicates, and that 2 gloo processes give
exactly what 1 process gives on the concatenated batch, for every method x add-on.

All cases run in ONE spawn of 2 processes (one process group; one ``Trainer`` per case), then
the single-process references run in this process.

Counting method (test_collectives_and_host_syncs_per_step): inside the 2 workers,
``torch.distributed.{all_reduce, all_gather, all_gather_into_tensor, broadcast, ...}`` are
replaced by counting wrappers (e2mc calls them through the module, so every Python-level
collective is seen; DDP's gradient buckets are all-reduced by its C++ reducer and are not
counted), and so are the Tensor methods that read a value back to the host: ``item``,
``tolist``, ``__bool__``, ``__int__``, ``__float__``, ``__index__``, ``cpu`` (not ``numpy``: it
only takes CPU tensors, so it never waits for a device; E2MC's CPU-only sort uses it). Each
event is attributed to the step whose ``train_step`` last started (so the loop's per-step work
after it, logging and the stop/save flag, counts to that step); counting pauses while the
loader fetches the next batch (its sampler and decoding work on CPU tensors, not the device). Reads of the CPU flag tensor of
``any_flag`` (the one per-step agreement on signals, over a gloo group: no device sync on GPU)
are counted apart from the other host syncs.
"""

from __future__ import annotations

import os
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WS, B = 2, 8  # 2 ranks x 8 images = one process with 16
METHODS = ("vicreg", "swav", "simsiam")
ADDONS = ("none", "e2mc", "vc", "uniformity", "mmcr")
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce_scatter",
               "reduce_scatter_tensor", "all_gather_object", "broadcast_object_list", "barrier",
               "all_to_all", "reduce", "gather", "scatter")
SYNCS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu")


def no_bn(m):
    """Per-sample norms instead of BN (plain BN normalises each rank's half batch on its own)."""
    for name, child in m.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(m, name, nn.GroupNorm(1, child.num_features))
        elif isinstance(child, nn.BatchNorm1d):
            setattr(m, name, nn.LayerNorm(child.num_features))
        else:
            no_bn(child)
    return m


def views(x):
    """Deterministic views: each image gets the same views whichever rank draws it."""
    v = (x.float() / 255.0 - 0.5) / 0.25
    return [v, v.flip(3)]


def config(out, method, addon, batch, *extra):
    from e2mc.config import load_config

    heads = {"vicreg": "{projector: [32, 32]}", "simsiam": "{}",
             "swav": "{hidden: 32, out: 16, prototypes: 12}"}[method]
    sets = ["data.dataset=digits", "data.image_size=8", "data.limit=64",
            "model.init=random:resnet_mini:8-16-32", f"model.head_sizes={heads}",
            f"optim.batch_size={batch}", "optim.lr=0.05", "optim.schedule=constant",
            "train.log_every=1", "train.probe_size=0", "train.max_steps=2", "train.tensorboard=false",
            f"method.name={method}", f"addon.name={addon}", f"out.dir={out}"]
    if method == "swav":  # queue of one global batch: empty at step 1, used at step 2
        sets += ["method.queue_length=16", "method.queue_start_step=0", "method.freeze_prototypes_iters=0"]
    if addon == "e2mc":
        sets += ["addon.m=3"]
    return load_config(None, sets + list(extra))


def run_case(out, method, addon, batch, *extra):
    """Two steps; per step the loss terms and the gradients; then the weights."""
    from e2mc.train.loop import Trainer

    t = Trainer(config(out, method, addon, batch, *extra), model_fn=no_bn, views_fn=views, quiet=True)
    real, steps = t.train_step, []

    def step(images, **kw):
        terms = real(images, **kw)
        grads = {n: p.grad.detach().clone() for n, p in t.model.named_parameters() if p.grad is not None}
        steps.append(({k: v.detach().clone() for k, v in terms.items()}, grads))
        return terms

    t.train_step = step
    t.fit()
    queue = t.queue.embeddings.detach().clone() if t.queue is not None else None
    return {"steps": steps, "weights": {k: v.detach().clone() for k, v in t.model.state_dict().items()},
            "queue": queue}


class Counter:
    """Counts collectives and host syncs per step (see the module docstring)."""

    def __init__(self):
        self.step, self.events, self.saved, self.active = 0, [], [], True

    def install(self):
        for name in COLLECTIVES:
            fn = getattr(dist, name, None)
            if fn is not None:
                self.saved.append((dist, name, fn))
                setattr(dist, name, self._wrap(fn, "collective", name))
        for name in SYNCS:
            fn = getattr(torch.Tensor, name)
            self.saved.append((torch.Tensor, name, fn))
            setattr(torch.Tensor, name, self._wrap(fn, "sync", name))

    def uninstall(self):
        for owner, name, fn in reversed(self.saved):
            setattr(owner, name, fn)
        self.saved = []

    def _wrap(self, fn, kind, name):
        counter = self

        def wrapped(*args, **kwargs):
            if counter.step and counter.active:
                where = "any_flag" if any(f.name in ("any_flag", "any_flags") for f in traceback.extract_stack(limit=6)) else ""
                counter.events.append((counter.step, kind, name, where))
            return fn(*args, **kwargs)

        return wrapped

    def paused_loader(self, loader):
        """The loader, with counting paused while it fetches a batch (CPU-side data work)."""
        counter = self

        class Loader:
            def __iter__(self):
                it = iter(loader)
                while True:
                    counter.active = False
                    try:
                        batch = next(it)
                    except StopIteration:
                        return
                    finally:
                        counter.active = True
                    yield batch

        return Loader()

    def per_step(self, n):
        out = {}
        for s in range(1, n + 1):
            ev = [e for e in self.events if e[0] == s]
            out[s] = {"collectives": [e[2] for e in ev if e[1] == "collective"],
                      "syncs": [e[2] for e in ev if e[1] == "sync" and e[3] != "any_flag"],
                      "flag_syncs": [e[2] for e in ev if e[1] == "sync" and e[3] == "any_flag"]}
        return out


def count_case(out, method, addon, steps=4, log_every=2):
    """Per-step collectives and host syncs of a real run (logging every ``log_every`` steps)."""
    from e2mc.train.loop import Trainer

    t = Trainer(config(out, method, addon, B, f"train.max_steps={steps}", f"train.log_every={log_every}"),
                model_fn=no_bn, views_fn=views, quiet=True)
    counter, real = Counter(), t.train_step

    def step(images, **kw):
        counter.step += 1
        return real(images, **kw)

    t.train_step = step
    t.loader = counter.paused_loader(t.loader)
    counter.install()
    try:
        t.fit()
    finally:
        counter.uninstall()
    return counter.per_step(steps)


COUNT_CASES = (("vicreg", "e2mc"), ("swav", "e2mc"), ("simsiam", "mmcr"))


def _worker(rank, tmp):
    os.environ.update(WORLD_SIZE=str(WS), RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=WS)
    results = {}
    for method in METHODS:
        for addon in ADDONS:
            results[(method, addon)] = run_case(f"{tmp}/r{rank}_{method}_{addon}", method, addon, B)
    counts = {c: count_case(f"{tmp}/c{rank}_{c[0]}_{c[1]}", *c) for c in COUNT_CASES}
    torch.save({"results": results, "counts": counts}, f"{tmp}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(tmp),), nprocs=WS, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WS)]


def _close(a, b, what, rtol=2e-4, atol=1e-6):
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_equal_one_on_the_concatenated_batch(spawned, method, tmp_path):
    for addon in ADDONS:
        one = run_case(tmp_path / f"one_{addon}", method, addon, WS * B)
        ddp = [spawned[r]["results"][(method, addon)] for r in range(WS)]
        case = f"{method}+{addon}"
        assert len(one["steps"]) == len(ddp[0]["steps"]) == 2
        for s in range(2):
            ref_terms, ref_grads = one["steps"][s]
            for k in ("loss", "base", "addon"):  # the local losses' mean over ranks is the global loss
                mean = sum(d["steps"][s][0][k] for d in ddp) / WS
                _close(mean, ref_terms[k], f"{case} step {s + 1} {k}")
            for r in range(WS):  # after DDP averaging every rank holds the single-process gradient
                grads = ddp[r]["steps"][s][1]
                assert sorted(grads) == sorted(ref_grads), case
                for n in ref_grads:  # step 2 starts from weights that differ by float rounding
                    _close(grads[n], ref_grads[n], f"{case} step {s + 1} grad {n} rank {r}",
                           rtol=2e-4 if s == 0 else 2e-3, atol=1e-6 if s == 0 else 2e-5)
        for r in range(WS):
            for n, w in one["weights"].items():
                _close(ddp[r]["weights"][n], w, f"{case} weights {n} rank {r}")
        if method == "swav":  # the ranks' queues together hold the single-process queue's rows
            rows = torch.cat([d["queue"] for d in ddp], dim=1)
            ref = one["queue"]
            key = lambda q: q.reshape(-1, q.shape[-1])[torch.argsort(q.reshape(-1, q.shape[-1])[:, 0])]  # noqa: E731
            _close(key(rows), key(ref), f"{case} queue rows")


# The budget per step (e2mc's own collectives; DDP's gradient buckets come on top):
#   vicreg+e2mc: forward 1 all_gather (both views in one), backward 1 all_reduce (their gradient), 1 flag
#   swav+e2mc: + the distributed Sinkhorn (both assignment crops at once: 1 max + 1 total + 3 row sums)
#   simsiam+mmcr: as vicreg (the base loss is per sample: no gather)
# At logging steps, one more all_reduce averages the logged terms over ranks.
BUDGET = {("vicreg", "e2mc"): 3, ("swav", "e2mc"): 8, ("simsiam", "mmcr"): 3}


@pytest.mark.parametrize("case", COUNT_CASES)
def test_collectives_and_host_syncs_per_step(spawned, case):
    for r in range(WS):
        counts = spawned[r]["counts"][case]
        for s in (1, 2, 3):  # step 4 ends the run (final checkpoint)
            c = counts[s]
            logging = s % 2 == 0
            assert len(c["collectives"]) <= BUDGET[case] + logging, (case, r, s, c)
            assert c["flag_syncs"] == ["tolist"], (case, r, s, c)  # any_flag: once per step
            if not logging:
                assert c["syncs"] == [], (case, r, s, c)
