"""DINO loss (Caron et al., ICCV 2021): cross-entropy of the student's crops against the
centred, sharpened teacher distribution of the other global crops; the centre is an EMA of the
teacher's batch mean.

For teacher logits ``t_i`` (the 2 global crops), student logits ``s_v`` (all crops), centre ``c``:

    q_i = softmax((t_i - c) / T_t)          (no gradient)
    loss = mean over pairs (i, v), v != i, of  mean_n  sum_k -q_i[n, k] log softmax(s_v / T_s)[n, k]
    c <- m c + (1 - m) mean over ranks and rows of [t_1; t_2]

(facebookresearch/dino main_dino.py ``DINOLoss``). Each rank computes the loss of its own batch
(DDP's gradient average then equals one process on the concatenated batch); the centre's batch
mean is all-reduced (one collective per step), so every rank holds the same centre.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from e2mc.criteria.entropy import check_views
from e2mc.errors import CriterionInputError


class DINOLoss(nn.Module):
    """The DINO cross-entropy. Called with ``(student, teacher, center, teacher_temp)``: per-crop
    student logits ``[s_1, ..., s_V]`` (the 2 global crops first), the teacher logits of the 2
    global crops ``[t_1, t_2]``, the centre (1, K) and the teacher temperature of this epoch.
    Computed in float32 with autocast disabled.

    Example:
        >>> s, t = [torch.randn(4, 16) for _ in range(4)], [torch.randn(4, 16) for _ in range(2)]
        >>> DINOLoss()(s, t, torch.zeros(1, 16), 0.04)["loss"].shape
        torch.Size([])
    """

    def __init__(self, student_temp: float = 0.1):
        super().__init__()
        self.student_temp = float(student_temp)

    def forward(
        self,
        student: Sequence[torch.Tensor],
        teacher: Sequence[torch.Tensor],
        center: torch.Tensor,
        teacher_temp: float,
    ) -> dict[str, torch.Tensor]:
        """The loss over every (teacher crop, other student crop) pair."""
        check_views(list(student), "DINOLoss (student crops)")
        check_views(list(teacher), "DINOLoss (teacher crops)", n_views=2)
        if len(student) < 2 or student[0].shape[1] != teacher[0].shape[1]:
            raise CriterionInputError(
                f"DINOLoss: {len(student)} student crops of width {student[0].shape[1]} for teacher logits of "
                f"width {teacher[0].shape[1]}; pass the 2 global crops first, all of the head's out_dim"
            )
        if tuple(center.shape) != (1, teacher[0].shape[1]):
            raise CriterionInputError(
                f"DINOLoss: the centre is {tuple(center.shape)}, the logits have {teacher[0].shape[1]} columns; "
                "rebuild the method state for this head (out_dim)"
            )
        with torch.autocast(device_type=student[0].device.type, enabled=False):
            c = center.float()
            qs = [F.softmax((t.detach().float() - c) / teacher_temp, dim=-1) for t in teacher]
            logp = [F.log_softmax(s.float() / self.student_temp, dim=-1) for s in student]
            total, pairs = 0.0, 0
            for i, q in enumerate(qs):
                for v, lp in enumerate(logp):
                    if v == i:
                        continue
                    total = total + torch.sum(-q * lp, dim=-1).mean()
                    pairs += 1
            loss = total / pairs
            entropy = -(qs[0] * torch.log(qs[0].clamp_min(1e-12))).sum(-1).mean().detach()
        return {"loss": loss, "teacher_entropy": entropy}


@torch.no_grad()
def batch_center(teacher: Sequence[torch.Tensor], distributed: bool = True) -> torch.Tensor:
    """The mean (1, K) of the teacher logits of all global crops, over every rank's batch
    (one all-reduce of the sum under ``torchrun``; per-rank batches are equal)."""
    from e2mc.distributed import all_reduce_sum, world_size

    t = torch.cat([x.detach().float() for x in teacher])
    total = t.sum(dim=0, keepdim=True)
    ranks = 1
    if distributed:
        all_reduce_sum(total)
        ranks = world_size()
    return total / (t.shape[0] * ranks)


@torch.no_grad()
def update_center(center: torch.Tensor, teacher: Sequence[torch.Tensor], momentum: float = 0.9) -> None:
    """``center <- momentum * center + (1 - momentum) * batch_center(teacher)``, in place."""
    center.mul_(momentum).add_(batch_center(teacher).to(center.dtype), alpha=1.0 - momentum)
