"""SwAV loss (Caron et al. 2020): swapped prediction of Sinkhorn-Knopp codes, optional queue."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from e2mc.criteria.entropy import check_views
from e2mc.distributed import all_reduce_sum, gather_no_grad, gather_with_grad, is_distributed, rank, world_size
from e2mc.errors import ConfigError, CriterionInputError


def _all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """Element-wise max over ranks (identity on one process); used for a stable exp."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


@torch.no_grad()
def sinkhorn_knopp(
    scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3, distributed: bool = True
) -> torch.Tensor:
    """Soft codes Q (B, K) from prototype scores (B, K) by Sinkhorn-Knopp, as in official SwAV.

    ``Q = exp(scores / epsilon)``, then ``iterations`` alternating normalisations so that each
    prototype receives ``B/K`` of the mass and each sample a total of 1 (the last step is the
    sample normalisation, so rows sum to exactly 1). With ``distributed=True`` the sums are
    all-reduced over ranks (``e2mc.distributed.all_reduce_sum``) and B is the global batch;
    on one process this is the same as ``distributed=False``. Float32, no gradient.

    ``scores`` may also be (C, B, K): C independent problems (SwAV's assignment crops) solved
    together, so the distributed sums of all of them share one all_reduce per normalisation
    (1 max, 1 total, ``iterations`` prototype sums in all). Nothing is read back to the host.
    """
    with torch.autocast(device_type=scores.device.type, enabled=False):
        s = scores.detach().float()
        single = s.dim() == 2
        if single:
            s = s.unsqueeze(0)
        # Subtracting the global max is exact after normalisation and avoids exp overflow.
        smax = s.amax(dim=(1, 2))
        if distributed:
            smax = _all_reduce_max(smax)
        q = torch.exp((s - smax[:, None, None]) / epsilon).transpose(1, 2)  # (C, K, B)
        k = q.shape[1]
        head = torch.cat([q.sum(dim=(1, 2)), q.new_full((1,), float(q.shape[2]))])  # totals, B
        if distributed:
            all_reduce_sum(head)
        total, b = head[:-1], head[-1]
        q /= total[:, None, None]
        for _ in range(iterations):
            rows = q.sum(dim=2, keepdim=True)
            q /= all_reduce_sum(rows) if distributed else rows
            q /= k
            q /= q.sum(dim=1, keepdim=True)
            q /= b
        q *= b
        q = q.transpose(1, 2)
        return q[0] if single else q


class SwAVQueue(nn.Module):
    """FIFO queue of past L2-normalised embeddings, one row block per assignment crop.

    Holds a buffer (num_crops_for_assign, length, dim); ``full`` becomes True once ``length``
    embeddings have been pushed. Push the current batch with ``push(i, emb)`` (detached, newest
    first, oldest dropped), as in official SwAV.
    """

    def __init__(self, length: int, dim: int, num_crops_for_assign: int = 2) -> None:
        super().__init__()
        if length < 1 or dim < 1 or num_crops_for_assign < 1:
            raise ConfigError(
                f"SwAVQueue needs positive length, dim and crops, got {length}, {dim}, {num_crops_for_assign}"
            )
        self.register_buffer("embeddings", torch.zeros(num_crops_for_assign, length, dim))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self._filled = 0  # host copy of ``filled``: checking ``full`` reads nothing from the device

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._filled = int(self.filled)

    @property
    def full(self) -> bool:
        """True once the queue holds ``length`` real embeddings."""
        return self._filled >= self.embeddings.shape[1]

    @torch.no_grad()
    def push(self, i: int, emb: torch.Tensor) -> None:
        """Insert ``emb`` (B, dim) at the front of block ``i`` (newest first)."""
        length = self.embeddings.shape[1]
        bsz = min(emb.shape[0], length)
        block = self.embeddings[i]
        block[bsz:] = block[:-bsz].clone() if bsz < length else block[bsz:]
        block[:bsz] = emb[:bsz].detach().to(block.dtype)

    @torch.no_grad()
    def advance(self, n: int) -> None:
        """Count ``n`` new embeddings (call once per step after pushing every block)."""
        self._filled = min(self._filled + int(n), self.embeddings.shape[1])
        self.filled.fill_(self._filled)

    def global_state(self, block: int) -> dict:
        """The state one process on the concatenated batches would hold (world-size independent).

        Under torchrun each rank keeps its own rows (``length`` per rank, pushed ``block`` at a
        time, as official SwAV); this gathers them (a collective: every rank calls it) and
        interleaves the ranks' blocks step by step, newest first. On one process: ``state_dict()``.
        """
        ws = world_size()
        if ws == 1:
            return self.state_dict()
        c, length, d = self.embeddings.shape
        rows = gather_no_grad(self.embeddings.transpose(0, 1).contiguous())  # (ws * length, c, d)
        g = rows.reshape(ws, length // block, block, c, d).permute(3, 1, 0, 2, 4).reshape(c, ws * length, d)
        return {"embeddings": g, "filled": self.filled * ws}

    def load_global_state(self, state: dict, block: int) -> bool:
        """Load a ``global_state`` (this rank's share of it); False, leaving the queue empty, when it
        does not fit this run's queue (another queue length, world size or batch)."""
        ws, r = world_size(), rank()
        e = state["embeddings"]
        c, length, d = self.embeddings.shape
        if tuple(e.shape) != (c, ws * length, d) or (ws > 1 and length % block):
            return False
        if ws > 1:
            e = e.reshape(c, length // block, ws, block, d)[:, :, r].reshape(c, length, d)
        self.load_state_dict({"embeddings": e, "filled": torch.as_tensor(int(state["filled"]) // ws)})
        return True


class SwAVLoss(nn.Module):
    """Swapped-prediction loss over crops with Sinkhorn-Knopp codes.

    For each assignment crop i in ``crops_for_assign``: ``q_i = sinkhorn(scores_i)`` (no grad);
    ``loss_i = mean_{v != i} mean_n -sum_k q_i[n, k] log_softmax(scores_v / temperature)[n, k]``;
    ``loss = mean_i loss_i``.

    ``gather=False`` (the default) is the official SwAV scheme (facebookresearch/swav,
    ``main_swav.py``): each rank computes the loss of its LOCAL batch, with codes from a
    distributed Sinkhorn (its sums all-reduced over ranks, B the global batch), and DDP averages
    the gradients. The codes are those of one process on the concatenated batch, the mean of the
    ranks' losses is its loss, and the averaged gradients are its gradients (equal per-rank
    batches). ``gather=True`` gathers the scores over ranks (with gradient) and computes codes and
    loss on the global batch on every rank (same result, V times the loss work per rank).

    With a full ``queue`` (``SwAVQueue``) the queue's scores ``queue @ prototypes.T`` are prepended
    before Sinkhorn and only the batch rows of the codes are kept; the queue is then updated with
    the current ``embeddings`` of the assignment crops (detached; the local ones with
    ``gather=False``, so each rank keeps its own rows and the ranks' queues together hold what one
    process's queue would, when each rank's length is the global length / world size).

    Example:
        >>> scores = [torch.randn(16, 10) for _ in range(2)]
        >>> SwAVLoss()(scores)["loss"].shape
        torch.Size([])
    """

    def __init__(
        self,
        temperature: float = 0.1,
        sinkhorn_epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        crops_for_assign: Sequence[int] = (0, 1),
        gather: bool = False,
    ) -> None:
        super().__init__()
        if temperature <= 0 or sinkhorn_epsilon <= 0 or sinkhorn_iterations < 1:
            raise ConfigError("SwAVLoss needs temperature > 0, sinkhorn_epsilon > 0 and sinkhorn_iterations >= 1")
        if len(crops_for_assign) == 0:
            raise ConfigError("SwAVLoss needs at least one crop in crops_for_assign, e.g. (0, 1)")
        self.temperature = float(temperature)
        self.sinkhorn_epsilon = float(sinkhorn_epsilon)
        self.sinkhorn_iterations = int(sinkhorn_iterations)
        self.crops_for_assign = tuple(int(c) for c in crops_for_assign)
        self.gather = bool(gather)

    def forward(
        self,
        scores: Sequence[torch.Tensor],
        embeddings: Sequence[torch.Tensor] | None = None,
        prototypes: torch.Tensor | None = None,
        queue: SwAVQueue | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute the SwAV loss of per-crop prototype scores (each (N, K))."""
        check_views(scores, "SwAVLoss (scores)")
        n_crops = len(scores)
        if n_crops < 2 or max(self.crops_for_assign) >= n_crops or min(self.crops_for_assign) < 0:
            raise CriterionInputError(
                f"SwAVLoss: crops_for_assign={self.crops_for_assign} needs at least 2 crops and "
                f"indices < {n_crops}; pass the large crops first"
            )
        if queue is not None and (embeddings is None or prototypes is None):
            raise CriterionInputError("SwAVLoss: a queue needs the per-crop `embeddings` and the `prototypes` weight")
        with torch.autocast(device_type=scores[0].device.type, enabled=False):
            s = [(gather_with_grad(x) if self.gather else x).float() for x in scores]
            logp = [F.log_softmax(x / self.temperature, dim=1) for x in s]
            bsz = s[0].shape[0]
            with torch.no_grad():
                outs = [s[crop].detach() for crop in self.crops_for_assign]
                if queue is not None:
                    if queue.full:
                        protos = prototypes.detach().float()
                        outs = [
                            torch.cat([queue.embeddings[qi].float() @ protos.t(), out]) for qi, out in enumerate(outs)
                        ]
                    for qi, crop in enumerate(self.crops_for_assign):
                        emb = embeddings[crop].detach()
                        queue.push(qi, gather_no_grad(emb) if self.gather else emb)
                    queue.advance(bsz)
                # all assignment crops in one Sinkhorn (one set of all_reduces when distributed)
                codes = sinkhorn_knopp(
                    torch.stack(outs), self.sinkhorn_epsilon, self.sinkhorn_iterations, distributed=not self.gather
                )[:, -bsz:]
            loss = s[0].new_zeros(())
            for qi, crop in enumerate(self.crops_for_assign):
                sub = [-(codes[qi] * logp[v]).sum(dim=1).mean() for v in range(n_crops) if v != crop]
                loss = loss + torch.stack(sub).mean()
            loss = loss / len(self.crops_for_assign)
        return {"loss": loss}
