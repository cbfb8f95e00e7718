"""What a training data source hands the data module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hybatch.data.corpus import ParallelCorpus

if TYPE_CHECKING:
    from hybatch.evaluation.lareqa import LareqaBenchmark


@dataclass
class TrainingData:
    """Train / val / test corpora, and retrieval benchmarks over the held-out splits when there are any."""

    train: ParallelCorpus
    val: ParallelCorpus | None = None
    test: ParallelCorpus | None = None
    val_benchmark: LareqaBenchmark | None = None
    test_benchmark: LareqaBenchmark | None = None
