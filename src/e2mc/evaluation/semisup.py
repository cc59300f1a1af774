"""Training a linear head on a network, frozen (linear protocol) or end to end (semi-supervised).

``train_classifier`` is the shared loop: RandomResizedCrop + horizontal flip on the fly (uint8,
per sample), the evaluation transform for normalisation, SGD with momentum and a per-step cosine
schedule, separate learning rates for head and backbone, and the LAST epoch's test accuracy
(no selection on the test set). ``semisup`` fine-tunes the whole network on class-balanced
label fractions (1% and 10% by default) drawn with :func:`e2mc.data.splits.balanced_subset`
and writes the subset indices into the result so a run can be repeated exactly.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from e2mc.data.splits import balanced_subset
from e2mc.errors import DataError
from e2mc.evaluation.features import default_transform
from e2mc.evaluation.stats import summarize


def dataset_labels(ds) -> torch.Tensor:
    """Labels of a dataset as int64: ``.targets``, a ``TensorDataset``'s second tensor, or a scan."""
    if hasattr(ds, "targets"):
        return torch.as_tensor(list(ds.targets) if not torch.is_tensor(ds.targets) else ds.targets, device="cpu").long()
    if isinstance(ds, torch.utils.data.TensorDataset) and len(ds.tensors) > 1:
        return ds.tensors[1].long().cpu()
    return torch.tensor([int(ds[i][1]) for i in range(len(ds))], dtype=torch.long, device="cpu")


def augment(batch: torch.Tensor, size: int, scale=(0.08, 1.0)) -> torch.Tensor:
    """Per-sample RandomResizedCrop to ``size`` and horizontal flip of a uint8 (N, C, H, W) batch."""
    from torchvision.transforms import v2

    t = v2.Compose([v2.RandomResizedCrop(size, scale=scale, antialias=True), v2.RandomHorizontalFlip()])
    return torch.stack([t(img) for img in batch])


def _embed(model, x):
    return model.embed(x) if hasattr(model, "embed") else model(x)


@torch.no_grad()
def _accuracy(model, head, loader, transform, device) -> float:
    model.eval()
    head.eval()
    correct = total = 0
    for images, target in loader:
        logits = head(_embed(model, transform(images.to(device))).flatten(1))
        correct += int((logits.argmax(1) == torch.as_tensor(target, device=logits.device)).sum())
        total += len(target)
    return correct / max(total, 1)


def train_classifier(
    model,
    train_ds,
    test_ds,
    epochs: int,
    *,
    freeze_backbone: bool,
    lr_head: float = 0.1,
    lr_backbone: float = 0.0,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    device: str = "cpu",
    transform=None,
    image_size: int | None = None,
    seed: int = 0,
    indices: torch.Tensor | None = None,
    num_classes: int | None = None,
) -> dict:
    """Train ``nn.Linear`` on ``model.embed`` features (backbone frozen in eval mode, or fine-tuned).

    The model is deep-copied, so the caller's weights never change. Returns ``{"top1": last-epoch
    test accuracy, "epochs", "reported": "last epoch", "train_loss": last epoch's mean loss}``.
    """
    if epochs < 1:
        raise DataError(f"epochs must be >= 1, got {epochs}")
    labels = dataset_labels(train_ds)
    if indices is not None:
        labels = labels[indices]
        train_ds = torch.utils.data.Subset(train_ds, [int(i) for i in indices])
    if (labels < 0).any():
        raise DataError("classifier training: some training labels are missing (-1); use a labelled split")
    if labels.unique().numel() < 2:
        raise DataError("classifier training: the training labels contain one class only")
    c = int(num_classes) if num_classes is not None else int(max(labels.max(), dataset_labels(test_ds).max())) + 1
    device = torch.device(device)
    transform = transform or default_transform(train_ds if indices is None else train_ds.dataset)[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = copy.deepcopy(model).to(device)
        first = next(iter(torch.utils.data.DataLoader(train_ds, batch_size=2)))[0]
        size = int(image_size or first.shape[-1])
        net.eval()
        with torch.no_grad():
            dim = _embed(net, transform(first.to(device))).flatten(1).shape[1]
        head = nn.Linear(dim, c).to(device)
        head.weight.data.normal_(0, 0.01)
        head.bias.data.zero_()
        groups = [{"params": head.parameters(), "lr": lr_head}]
        if freeze_backbone:
            net.requires_grad_(False)
        else:
            groups.append({"params": [p for p in net.parameters() if p.requires_grad], "lr": lr_backbone})
        opt = torch.optim.SGD(groups, momentum=momentum, weight_decay=weight_decay)
        loader = torch.utils.data.DataLoader(train_ds, batch_size=batch_size, shuffle=True, drop_last=False)
        total_steps = epochs * len(loader)
        base = [g["lr"] for g in opt.param_groups]
        step, loss_sum, n_seen = 0, 0.0, 0
        for _ in range(epochs):
            net.train(not freeze_backbone)
            head.train()
            loss_sum, n_seen = 0.0, 0
            for images, target in loader:
                for g, lr0 in zip(opt.param_groups, base):
                    g["lr"] = lr0 * 0.5 * (1 + math.cos(math.pi * step / total_steps))
                x = transform(augment(images, size).to(device))
                with torch.set_grad_enabled(not freeze_backbone):
                    feats = _embed(net, x).flatten(1)
                loss = F.cross_entropy(head(feats), torch.as_tensor(target, device=device).long())
                if not torch.isfinite(loss):
                    raise DataError("classifier training diverged (NaN loss); lower the learning rates")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                loss_sum += float(loss.detach()) * len(target)
                n_seen += len(target)
        test_loader = torch.utils.data.DataLoader(test_ds, batch_size=batch_size)
        top1 = _accuracy(net, head, test_loader, transform, device)
    return {"top1": top1, "epochs": int(epochs), "reported": "last epoch", "train_loss": loss_sum / max(n_seen, 1)}


def semisup(
    model,
    train_ds,
    test_ds,
    *,
    fractions: Sequence[float] = (0.01, 0.1),
    seeds: Sequence[int] = (0,),
    epochs: int = 20,
    lr_head: float = 0.1,
    lr_backbone: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    device: str = "cpu",
    transform=None,
    image_size: int | None = None,
) -> dict:
    """Fine-tune backbone + linear head on class-balanced label fractions, per seed.

    Returns ``{"top1_{p}pct": mean over seeds, "top1_{p}pct_ci95", "per_seed": {...}, "seeds",
    "subsets": {"{p}pct": {seed: [indices]}}, "reported": "last epoch", "epochs"}``.
    """
    labels = dataset_labels(train_ds)
    out: dict = {
        "per_seed": {},
        "seeds": [int(s) for s in seeds],
        "subsets": {},
        "reported": "last epoch",
        "epochs": int(epochs),
    }
    for frac in fractions:
        tag = f"{frac * 100:g}pct"
        key = f"top1_{tag}"
        accs = []
        for seed in seeds:
            idx = balanced_subset(labels, fraction=float(frac), seed=int(seed))
            out["subsets"].setdefault(tag, {})[str(seed)] = idx.tolist()
            res = train_classifier(
                model,
                train_ds,
                test_ds,
                epochs,
                freeze_backbone=False,
                lr_head=lr_head,
                lr_backbone=lr_backbone,
                momentum=momentum,
                weight_decay=weight_decay,
                batch_size=batch_size,
                device=device,
                transform=transform,
                image_size=image_size,
                seed=int(seed),
                indices=idx,
            )
            accs.append(res["top1"])
        s = summarize(accs)
        out[key] = s.mean
        out[key + "_ci95"] = None if s.low is None else [s.low, s.high]
        out["per_seed"][key] = accs
    return out


def linear_probe_finetune(
    model,
    train_ds,
    test_ds,
    epochs: int = 100,
    *,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    device: str = "cpu",
    transform=None,
    image_size: int | None = None,
    seed: int = 0,
) -> dict:
    """The paper's linear protocol: frozen backbone (eval-mode BN), RandomResizedCrop + flip on the
    fly, SGD momentum with a cosine schedule; returns the LAST epoch's test accuracy
    (``{"top1", "epochs", "reported": "last epoch"}``)."""
    return train_classifier(
        model,
        train_ds,
        test_ds,
        epochs=epochs,
        freeze_backbone=True,
        lr_head=lr,
        lr_backbone=0.0,
        momentum=momentum,
        weight_decay=weight_decay,
        batch_size=batch_size,
        device=device,
        transform=transform,
        image_size=image_size,
        seed=seed,
    )
