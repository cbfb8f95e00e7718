"""Which retrieved candidates become hard negatives: a rank window and a score ceiling relative to
the positive (positive-aware filtering, as NV-Retriever's "TopK-PercPos"), never the question's own
passage group. (A negative positive score, which a trained encoder rarely gives, gets a ceiling below it:
`(2 - ratio) x positive`, not `ratio x positive`, which would be above it.)

Ranks count every row of the searched pool, best score first, the positive included: with
`rank_range=[3, 50]` the two best-scoring rows are never taken, whatever they are. In the window, a row
of the question's passage group (`pool.py`) is left out, then a row scoring above `max_score_ratio` x
the positive's score (likely an unlabelled answer); the best-ranked `num_negatives` of the rest are
kept. Every candidate of the window is counted under the first reason it was left out.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

# Per language: questions searched; candidates in the rank window; of those, left out as the positive
# itself, as another row of its passage group, or over the score ceiling; eligible; kept; questions
# with fewer than num_negatives kept, and the negatives they lack.
COUNT_KEYS = ("queries", "window", "positive", "same_passage", "score_ratio", "eligible", "kept", "short_rows", "missing")


@dataclass(frozen=True)
class MiningFilters:
    """`num_negatives` per question, the 1-based inclusive `rank_range`, and `max_score_ratio` (None: no ceiling)."""

    num_negatives: int
    rank_range: tuple[int, int]
    max_score_ratio: float | None = 0.95

    def __post_init__(self) -> None:
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives={self.num_negatives}: expected 1 or more")
        low, high = self.rank_range
        if not 1 <= low <= high:
            raise ValueError(f"rank_range={list(self.rank_range)}: expected [a, b] with 1 <= a <= b (rank 1 is the best-scoring row)")
        if high - low + 1 < self.num_negatives:
            raise ValueError(f"rank_range={list(self.rank_range)} holds fewer than num_negatives={self.num_negatives} ranks")
        if self.max_score_ratio is not None and not self.max_score_ratio > 0:
            raise ValueError(f"max_score_ratio={self.max_score_ratio}: expected a positive number or null")


def select_negatives(
    scores: np.ndarray,
    rows: np.ndarray,
    positive_scores: np.ndarray,
    positive_rows: np.ndarray,
    own_groups: np.ndarray,
    row_groups: np.ndarray,
    filters: MiningFilters,
    counts: Counter,
) -> list[list[int]]:
    """The kept pool rows of each question, best rank first; `counts` gets COUNT_KEYS added.

    `scores` / `rows` (n, k): each question's top k rows of the pool, best first (row -1: no hit, as an
    IVF index may return); `positive_scores`, `positive_rows`, `own_groups` (n,): its positive's score
    and row and its passage group; `row_groups`: every pool row's group.
    """
    low, high = filters.rank_range
    window_rows = rows[:, low - 1 : high]
    window_scores = scores[:, low - 1 : high]
    hit = window_rows >= 0
    groups = row_groups[np.where(hit, window_rows, 0)]
    positive = hit & (window_rows == positive_rows[:, None])
    same = hit & ~positive & (groups == own_groups[:, None])
    excluded = positive | same
    over = np.zeros_like(hit)
    if filters.max_score_ratio is not None:
        ratio, positive_scores = np.float32(filters.max_score_ratio), positive_scores.astype(np.float32)
        # ratio x positive; below a negative positive score as far as above it would be (its |x| (1 - ratio) under it,
        # sentence-transformers' relative_margin = 1 - ratio), never above the positive.
        ceiling = np.where(positive_scores >= 0, ratio * positive_scores, (np.float32(2) - ratio) * positive_scores)
        over = hit & ~excluded & (window_scores > ceiling[:, None])
    eligible = hit & ~excluded & ~over
    take = eligible & (np.cumsum(eligible, axis=1) <= filters.num_negatives)
    kept = take.sum(axis=1)
    counts.update({
        "queries": len(rows), "window": int(hit.sum()), "positive": int(positive.sum()), "same_passage": int(same.sum()),
        "score_ratio": int(over.sum()), "eligible": int(eligible.sum()), "kept": int(kept.sum()),
        "short_rows": int((kept < filters.num_negatives).sum()), "missing": int((filters.num_negatives - kept).sum()),
    })  # fmt: skip
    return [r[t].tolist() for r, t in zip(window_rows, take, strict=True)]
