"""vturrisi/solo-learn's BYOL ``.ckpt`` save path (main_pretrain.py under Lightning), reproduced
without Lightning (no official code copied).

Writes, into OUT:

* ``byol-cifar10-0-ep=<E-1>.ckpt``: what solo's ``Checkpointer`` writes with
  ``trainer.save_checkpoint`` at the end of an epoch, Lightning 2.1.2: ``{'epoch', 'global_step',
  'pytorch-lightning_version', 'state_dict', 'loops', 'callbacks', 'optimizer_states',
  'lr_schedulers'}``. ``state_dict`` is the LightningModule's (``solo.methods.byol.BYOL``) in its
  registration order: ``backbone.*`` (torchvision resnet18 with ``fc = Identity``),
  ``classifier.*`` (the online linear probe), ``momentum_backbone.*``, ``projector.*``,
  ``momentum_projector.*``, ``predictor.*`` (MLPs Linear, BN1d, ReLU, Linear, all with biases; the
  momentum copies hold the online parameters at init and their own BatchNorm buffers).
  ``optimizer_states`` holds solo's LARS (state ``momentum_buffer``; 4 param groups ``backbone``,
  ``classifier`` (its own lr, weight decay 0), ``projector``, ``predictor``, with LARS' defaults
  and the scheduler's ``initial_lr``); ``lr_schedulers`` the per-step
  ``LinearWarmupCosineAnnealingLR``'s state; ``loops`` Lightning's progress counters.
* ``byol.tensors.pt`` (not official): the state dict's tensors, plain, for the tests.

``python gen_byol.py reload FILE`` is what solo-learn does with a file: Lightning's model restore
(``BYOL.load_state_dict(ckpt['state_dict'])``, strict), main_linear.py's backbone extraction
(``backbone.*`` into a resnet18 with ``strict=False``: nothing missing but ``fc``), and, when the
file has ``optimizer_states``, the trainer's resume of LARS and the scheduler and one more step;
prints a JSON summary.

Checked against the official code (vturrisi/solo-learn 9187ea3, lightning 2.1.2, omegaconf and
hydra-core in a separate venv under /tmp, nothing else installed or stubbed):
tests/official/check/byol_official.py runs main_pretrain.py with scripts/pretrain/cifar/byol.yaml
on a custom folder of 8 images (one epoch of 2 batches of 4, resnet18, heads 32/16/24, CPU,
fp32). tests/official/check/compare.py on its ``byol-cifar10-0-ep=0.ckpt`` and this generator's
``generate OUT --epoch 1``: structure SAME (top-level keys in order, ``state_dict`` keys, order,
shapes and dtypes, LARS state indices and ``momentum_buffer`` keys, ``param_groups`` keys and value
types, scheduler and loop counters), pickle globals SAME (``collections.OrderedDict``, torch
storages and ``_rebuild_tensor_v2``); the loop counters and the scheduler state are equal too. The
official resume accepts the generated file: main_pretrain.py with the same overrides plus
``++max_epochs=2 ++resume_from_checkpoint=<generated file>`` restores it and trains epoch 1.
"""

from __future__ import annotations

import copy
import math
import sys
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _nets import generator_main  # noqa: E402

PROJ_HIDDEN, PROJ_DIM, PRED_HIDDEN, CLASSES = 32, 16, 24, 2
LR, CLASSIFIER_LR, BATCHES = 1.0 * 4 / 256, 0.1, 2  # cifar/byol.yaml lr scaled by batch 4 / 256
PL_VERSION = "2.1.2"


def _mlp(cin, hidden, cout):
    return nn.Sequential(nn.Linear(cin, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, cout))


def _resnet18():
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    return net


class SoloBYOL(nn.Module):
    """The LightningModule's submodules, in solo's registration order (BaseMethod, then
    BaseMomentumMethod, then BYOL)."""

    def __init__(self, proj_hidden=PROJ_HIDDEN, proj_dim=PROJ_DIM, pred_hidden=PRED_HIDDEN, classes=CLASSES):
        super().__init__()
        self.backbone = _resnet18()
        self.classifier = nn.Linear(512, classes)
        self.momentum_backbone = _resnet18()
        _copy_params(self.backbone, self.momentum_backbone)
        self.projector = _mlp(512, proj_hidden, proj_dim)
        self.momentum_projector = _mlp(512, proj_hidden, proj_dim)
        _copy_params(self.projector, self.momentum_projector)
        self.predictor = _mlp(proj_dim, pred_hidden, proj_dim)

    def pairs(self):
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)]


def _copy_params(online, momentum):
    for o, m in zip(online.parameters(), momentum.parameters()):
        m.data.copy_(o.data)
        m.requires_grad = False


class Lars(torch.optim.Optimizer):
    """SGD with layer-wise trust ratios, solo's defaults and param-group keys (state ``momentum_buffer``)."""

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, eta=1e-3, eps=1e-8,
                 clip_lr=False, exclude_bias_n_norm=False):  # fmt: skip
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                        eta=eta, eps=eps, clip_lr=clip_lr, exclude_bias_n_norm=exclude_bias_n_norm)  # fmt: skip
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                pn, gn = p.norm(), p.grad.norm()
                scaled = (p.ndim != 1 or not g["exclude_bias_n_norm"]) and pn != 0 and gn != 0
                if scaled:
                    trust = g["eta"] * pn / (gn + pn * g["weight_decay"] + g["eps"])
                    trust = min(trust / g["lr"], 1) if g["clip_lr"] else trust
                    update = (update + g["weight_decay"] * p) * trust
                st = self.state[p]
                if "momentum_buffer" in st:
                    update = st["momentum_buffer"].mul_(g["momentum"]).add_(update, alpha=1 - g["dampening"])
                else:
                    update = st["momentum_buffer"] = update.clone()
                p.sub_(g["lr"] * update)


class WarmupCosine(torch.optim.lr_scheduler.LRScheduler):
    """Linear warm-up from ``warmup_start_lr`` then cosine to ``eta_min``, per step (solo's state keys)."""

    def __init__(self, optimizer, warmup_epochs, max_epochs, warmup_start_lr=0.0, eta_min=0.0):
        self.warmup_epochs, self.max_epochs = warmup_epochs, max_epochs
        self.warmup_start_lr, self.eta_min = warmup_start_lr, eta_min
        super().__init__(optimizer)

    def get_lr(self):
        t = self.last_epoch
        if t < self.warmup_epochs:
            w = t / max(1.0, self.warmup_epochs - 1)
            return [self.warmup_start_lr + w * (b - self.warmup_start_lr) for b in self.base_lrs]
        c = (1 + math.cos(math.pi * (t - self.warmup_epochs) / max(1, self.max_epochs - self.warmup_epochs))) / 2
        return [self.eta_min + c * (b - self.eta_min) for b in self.base_lrs]


def build(proj_hidden=PROJ_HIDDEN, proj_dim=PROJ_DIM, pred_hidden=PRED_HIDDEN, classes=CLASSES, steps=BATCHES):
    model = SoloBYOL(proj_hidden, proj_dim, pred_hidden, classes)
    groups = [
        {"name": "backbone", "params": model.backbone.parameters()},
        {"name": "classifier", "params": model.classifier.parameters(), "lr": CLASSIFIER_LR, "weight_decay": 0},
        {"name": "projector", "params": model.projector.parameters()},
        {"name": "predictor", "params": model.predictor.parameters()},
    ]
    opt = Lars(groups, lr=LR, weight_decay=1e-5, momentum=0.9, eta=0.02, clip_lr=True, exclude_bias_n_norm=True)
    sched = WarmupCosine(opt, warmup_epochs=10.0 * steps, max_epochs=steps, warmup_start_lr=3e-5)
    return model, opt, sched


def _byol(p, z):
    return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1).mean()


def train(model, opt, sched, steps: int, seed: int, start: int = 0, total: int = BATCHES):
    g = torch.Generator().manual_seed(seed)
    model.train()
    for k in range(steps):
        x = [torch.rand(4, 3, 32, 32, generator=g) for _ in range(2)]
        y = torch.randint(0, model.classifier.out_features, (4,), generator=g)
        feats = [model.backbone(v) for v in x]
        zs = [model.projector(f) for f in feats]
        ps = [model.predictor(z) for z in zs]
        with torch.no_grad():
            mz = [model.momentum_projector(model.momentum_backbone(v)) for v in x]
        loss = _byol(ps[1], mz[0]) + _byol(ps[0], mz[1])
        loss = loss + sum(F.cross_entropy(model.classifier(f.detach()), y) for f in feats) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        tau = 1 - (1 - 0.99) * (math.cos(math.pi * (start + k) / total) + 1) / 2  # base_tau 0.99 -> 1
        with torch.no_grad():
            for online, momentum in model.pairs():
                for o, m in zip(online.parameters(), momentum.parameters()):
                    m.data = tau * m.data + (1 - tau) * o.data


def _progress(n, started=True, processed=True):
    d = {"ready": n, "completed": n}
    if started:
        d["started"] = n
    if processed:
        d["processed"] = n
    return d


def _both(n, **kw):
    return {"total": _progress(n, **kw), "current": _progress(n, **kw)}


def loops(steps: int, epochs: int) -> dict:
    """Lightning 2.1.2's loop counters after ``epochs`` epochs of ``steps`` batches, saved at the last
    epoch's end (that epoch started and processed, not yet completed)."""
    done, ep = steps * epochs, {"ready": epochs, "completed": epochs - 1, "started": epochs, "processed": epochs}
    idle = {**_both(0), "is_last_batch": False}
    return {
        "fit_loop": {
            "state_dict": {},
            "epoch_loop.state_dict": {"_batches_that_stepped": done},
            "epoch_loop.batch_progress": {
                "total": _progress(done),
                "current": _progress(steps),
                "is_last_batch": True,
            },
            "epoch_loop.scheduler_progress": {
                "total": _progress(done, False, False),
                "current": _progress(steps, False, False),
            },
            "epoch_loop.automatic_optimization.state_dict": {},
            "epoch_loop.automatic_optimization.optim_progress": {
                "optimizer": {
                    "step": {"total": _progress(done, False, False), "current": _progress(steps, False, False)},
                    "zero_grad": {"total": _progress(done, True, False), "current": _progress(steps, True, False)},
                }
            },
            "epoch_loop.manual_optimization.state_dict": {},
            "epoch_loop.manual_optimization.optim_step_progress": _both(0, started=False, processed=False),
            "epoch_loop.val_loop.state_dict": {},
            "epoch_loop.val_loop.batch_progress": idle,
            "epoch_progress": {"total": dict(ep), "current": dict(ep)},
        },
        "validate_loop": {"state_dict": {}, "batch_progress": dict(idle)},
        "test_loop": {"state_dict": {}, "batch_progress": dict(idle)},
        "predict_loop": {"state_dict": {}, "batch_progress": _both(0)},
    }


def generate(out: Path, steps: int, epoch: int, seed: int) -> None:
    torch.manual_seed(seed)
    model, opt, sched = build(steps=steps)
    train(model, opt, sched, steps, seed, total=steps)
    out.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict()
    ckpt = {
        "epoch": epoch - 1,
        "global_step": steps,
        "pytorch-lightning_version": PL_VERSION,
        "state_dict": sd,
        "loops": loops(steps, 1),
        "callbacks": {},
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [sched.state_dict()],
    }
    torch.save(ckpt, out / f"byol-cifar10-0-ep={epoch - 1}.ckpt")
    torch.save(OrderedDict((k, v.clone()) for k, v in sd.items()), out / "byol.tensors.pt")


def reload(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    sd = ckpt["state_dict"]
    sizes = (sd["projector.0.weight"].shape[0], sd["projector.3.weight"].shape[0], sd["predictor.0.weight"].shape[0])
    model, opt, sched = build(*sizes, classes=sd["classifier.weight"].shape[0])
    model.load_state_dict(sd)  # Lightning's restore of the module: strict
    backbone = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    lin = torchvision.models.resnet18()  # main_linear.py: backbone.* into the network, strict=False
    msg = lin.load_state_dict(backbone, strict=False)
    out = {
        "epoch": ckpt["epoch"],
        "global_step": ckpt["global_step"],
        "pl_version": ckpt["pytorch-lightning_version"],
        "linear_missing": sorted(msg.missing_keys),
        "linear_unexpected": sorted(msg.unexpected_keys),
        "target_is_online": all(
            torch.equal(a, b) for on, mo in model.pairs() for a, b in zip(on.parameters(), mo.parameters())
        ),
        "resumed": "optimizer_states" in ckpt,
    }
    if out["resumed"]:  # the trainer's resume: optimiser, scheduler, then training goes on
        opt.load_state_dict(ckpt["optimizer_states"][0])
        sched.load_state_dict(ckpt["lr_schedulers"][0])
        params = [p for g in opt.param_groups for p in g["params"]]
        out.update(
            params=len(params),
            with_momentum=sum("momentum_buffer" in opt.state[p] for p in params),
            groups=[g["name"] for g in opt.param_groups],
            loops=sorted(ckpt["loops"]),
        )
        before = copy.deepcopy(model.momentum_projector.state_dict())
        train(model, opt, sched, 1, seed=1, start=ckpt["global_step"], total=ckpt["global_step"] + 1)
        out["target_moved"] = not torch.equal(before["0.weight"], model.momentum_projector.state_dict()["0.weight"])
    return out


def main(argv=None) -> int:
    return generator_main(__doc__, generate, reload, 1000, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
