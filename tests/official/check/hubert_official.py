"""facebookresearch/fairseq's HuBERT loss on fixed inputs: the reference of tests/criteria/test_hubert_loss.py.

Usage: ``hubert_official.py REPO`` (a fairseq checkout; only ``fairseq/models/hubert/hubert.py`` is
read). fairseq's package imports need hydra, omegaconf and its C extensions, so the script takes
``HubertModel.compute_nce`` alone from the file (its source, by ``ast``: it needs only torch) and
builds the rest as ``HubertModel.forward``'s ``compute_pred`` and ``criterions/hubert_criterion.py``
do: per frame the positive label embedding and all of them as negatives, cosine logits /
``logit_temp``, ``F.cross_entropy(..., target 0, reduction="sum")`` of the masked and the unmasked
frames, ``loss = pred_masked_weight * sum_m + pred_nomask_weight * sum_u + loss_weights[0] *
features_pen * sample_size``, divided by ``sample_size`` (masked + unmasked frames counted).

Inputs (``torch.manual_seed(0)``): ``proj = randn(2, 6, 4)``, ``label_embs = randn(5, 4)``,
``targets = randint(0, 5, (2, 6))``, ``mask = rand(2, 6) < 0.6``, ``features_pen = 0.3``;
``logit_temp`` 0.1, ``pred_masked_weight`` 1, ``pred_nomask_weight`` 0.5, ``loss_weights`` [10].
Prints the loss and the gradient's absolute sum w.r.t. ``proj`` (float64 printing).

Result (2026-12-06, fairseq 3d262bb2, torch 2.14.1 CPU): ``7.751384735107422
7.108354568481445``, recorded in tests/criteria/test_hubert_loss.py.
"""

import ast
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

source = (Path(sys.argv[1]) / "fairseq" / "models" / "hubert" / "hubert.py").read_text()
cls = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == "HubertModel")
fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "compute_nce")
scope = {"torch": torch}
exec(compile(ast.Module(body=[fn], type_ignores=[]), "hubert.py", "exec"), scope)
model = types.SimpleNamespace(logit_temp=0.1)
compute_nce = types.MethodType(scope["compute_nce"], model)

torch.manual_seed(0)
proj = torch.randn(2, 6, 4, requires_grad=True)
label_embs = torch.randn(5, 4)
targets = torch.randint(0, 5, (2, 6))
mask = torch.rand(2, 6) < 0.6
features_pen, w_m, w_u, pen_w = torch.tensor(0.3), 1.0, 0.5, 10.0


def compute_pred(proj_x, target):  # HubertModel.forward's closure, without target_glu
    y = torch.index_select(label_embs, 0, target.long())
    negs = label_embs.unsqueeze(1).expand(-1, proj_x.size(0), -1)
    return compute_nce(proj_x, y, negs)


sums, size = [], 0
for sel in (mask, ~mask):
    logits = compute_pred(proj[sel], targets[sel])
    sums.append(F.cross_entropy(logits, logits.new_zeros(logits.size(0), dtype=torch.long), reduction="sum"))
    size += int(sel.sum())
loss = (w_m * sums[0] + w_u * sums[1] + pen_w * features_pen * size) / size
loss.backward()
print(repr(loss.item()), repr(proj.grad.abs().sum().item()))
