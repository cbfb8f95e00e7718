"""What a training data source hands the data module."""

from __future__ import annotations

from dataclasses import dataclass

from hybatch.data.corpus import ParallelCorpus
from hybatch.data.lareqa_benchmarks import LareqaBenchmark


@dataclass
class TrainingData:
    """Train / val / test corpora, and retrieval benchmarks over the held-out splits when there are any."""

    train: ParallelCorpus
    val: ParallelCorpus | None = None
    test: ParallelCorpus | None = None
    val_benchmark: LareqaBenchmark | None = None
    test_benchmark: LareqaBenchmark | None = None
    # Article titles per split (train / val / test) when the source splits by article: `split.json`.
    split: dict[str, list[str]] | None = None
