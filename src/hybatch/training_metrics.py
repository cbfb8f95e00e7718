"""In-batch retrieval metrics of the training and held-out steps as torchmetrics Metrics.

Each query of a contrastive batch ranks the batch's candidates (every positive, then the hard
negatives); its positive's rank gives accuracy (rank 1) and reciprocal rank. The states are sums
(hits or reciprocal ranks, and queries), reduced by summation across processes, so an epoch's value
on any number of devices is the mean over every query of every device: not a mean of per-device or
per-batch means, which weights a short last batch like a full one. Lightning synchronises and resets
them when they are logged as Metric objects (`self.log_dict(metrics)`).

Ties count in the query's favour (rank = 1 + the candidates scoring strictly higher); masked
candidates (-inf, false negatives) never outrank anything.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric, MetricCollection


class _PositiveRank(Metric):
    """Sum of a per-query function of the positive's rank, over the number of queries."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("queries", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    @abstractmethod
    def _value(self, rank: Tensor) -> Tensor:
        """The per-query value of the positive's rank (1 = best)."""

    def update(self, logits: Tensor, targets: Tensor | None = None) -> None:
        """`logits` (queries, candidates); `targets` the column of each query's positive (default: row i -> i)."""
        if logits.dim() != 2:
            raise ValueError(f"logits: expected a (queries, candidates) matrix, got shape {tuple(logits.shape)}")
        if targets is None:
            targets = torch.arange(logits.shape[0], device=logits.device)
        targets = targets.to(logits.device, torch.int64)
        if targets.shape != (logits.shape[0],) or bool(((targets < 0) | (targets >= logits.shape[1])).any()):
            raise ValueError(f"targets {targets.tolist()}: expected one column in [0, {logits.shape[1]}) per query")
        logits = logits.detach()
        positive = logits.gather(1, targets[:, None])
        rank = 1 + (logits > positive).sum(1)
        self.total += self._value(rank).sum().to(self.total.dtype)
        self.queries += logits.shape[0]

    def compute(self) -> Tensor:
        return (self.total / self.queries.clamp(min=1)).float()


class InBatchAccuracy(_PositiveRank):
    """Fraction of queries whose positive ranks first among the batch's candidates."""

    def _value(self, rank: Tensor) -> Tensor:
        return (rank == 1).to(torch.float64)


class InBatchMRR(_PositiveRank):
    """Mean reciprocal rank of the positive among the batch's candidates (no cut-off)."""

    def _value(self, rank: Tensor) -> Tensor:
        return 1.0 / rank.to(torch.float64)


def in_batch_metrics(prefix: str = "") -> MetricCollection:
    """`<prefix>accuracy` and `<prefix>mrr`, e.g. `in_batch_metrics("val/")`."""
    return MetricCollection({"accuracy": InBatchAccuracy(), "mrr": InBatchMRR()}, prefix=prefix, compute_groups=False)


def local_rows(logits: Tensor, local_size: int) -> tuple[Tensor, Tensor]:
    """This process's queries of a contrastive logits matrix, and the columns of their positives.

    `hybatch.loss.ContrastiveLoss(gather=True)` on W > 1 processes returns the GLOBAL logits, the same
    on every rank (rows: the W x B queries in rank order; column i: query i's positive). Each rank
    keeps its own B rows, so the summed metric states count every query once. Otherwise the rows
    are this process's queries already.
    """
    rows = logits.shape[0]
    if rows == local_size:
        return logits, torch.arange(rows, device=logits.device)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if rows != world * local_size:
        raise ValueError(f"logits have {rows} rows: expected the {local_size} local queries or {world} x {local_size} gathered ones")
    start = dist.get_rank() * local_size
    return logits[start : start + local_size], torch.arange(start, start + local_size, device=logits.device)
