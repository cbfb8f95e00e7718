"""Exact ranking metrics over a dense (queries x pool) score matrix, in query chunks.

One pass over the scores gives every metric for the whole pool *and* for each sub-pool (e.g. the
candidates of one language), without re-scoring: for each relevant item we count, per group, the
pool items scoring at least as high (`(chunk, R, N_g)` comparisons, groups kept contiguous), which is
all that average precision and ranks need. Memory is bounded by the chunk size.

Ties (documented choice, used consistently by every metric):
- Average precision follows `sklearn.metrics.average_precision_score`: items with equal scores are
  retrieved together, i.e. AP = 1/|rel| * sum over relevant i of
  #{relevant j: s_j >= s_i} / #{j: s_j >= s_i}.
- Ranks (and so R@k, nDCG@k, MRR@k and language bias) are pessimistic: a non-relevant item that ties
  with a relevant one is ranked before it; relevant items that tie with each other are ordered as
  they appear in the relevance list, so every relevant item gets a distinct rank (1 = best).

Not `torchmetrics.retrieval`: its RetrievalMAP orders tied scores by argsort (not the tie-aware AP
above), works in float32, and takes flat (preds, target, indexes) triples, i.e. the whole
(queries x pool) score matrix materialised once per sub-pool; these kernels stream query chunks
and derive every sub-pool from one pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

# Elements of the largest boolean comparison block (chunk x relevant x pool) held at once.
_MAX_BLOCK_ELEMENTS = 1 << 25


@dataclass
class RankingMetrics:
    """Per-query metrics for each pool (one per group, then "all").

    `values[name]` is (Q, P) float64 for name in AP, R@k, nDCG@k, MRR@k; NaN where the query has
    no relevant item in that pool (so `nanmean` skips it). `rank` / `rank_in_group` give the rank
    of each entry of `relevant` in the whole pool / in its own group's pool (0 for padding).
    """

    pools: tuple[str, ...]
    values: dict[str, Tensor]
    n_relevant: Tensor
    relevant: Tensor
    rank: Tensor
    rank_in_group: Tensor

    def column(self, pool: str) -> int:
        """Column of `pool` in the (Q, P) tensors."""
        try:
            return self.pools.index(pool)
        except ValueError:
            raise KeyError(f"no pool {pool!r}; pools are {list(self.pools)}") from None

    def rank_distance(self) -> Tensor:
        """(Q,) int64: per query, the whole-pool rank of its lowest-ranked relevant item minus that of its
        highest-ranked one (0 with one relevant item): the per-query term of language bias."""
        valid = self.relevant >= 0
        lowest = self.rank.max(1).values
        highest = torch.where(valid, self.rank, torch.iinfo(self.rank.dtype).max).min(1).values
        return torch.where(valid.any(1), lowest - highest, 0)


def pad_relevance(relevant: Sequence[Sequence[int]] | Tensor, pool_size: int | None = None) -> Tensor:
    """(Q, R) int64 tensor of relevant pool indices, padded with -1; validates range and duplicates."""
    if isinstance(relevant, Tensor):
        rel = relevant.to(torch.int64)
        if rel.dim() != 2:
            raise ValueError(f"relevant: expected a (queries, R) tensor, got shape {tuple(rel.shape)}")
    else:
        width = max((len(r) for r in relevant), default=0)
        rel = torch.full((len(relevant), max(width, 1)), -1, dtype=torch.int64)
        for q, items in enumerate(relevant):
            if len(items):
                rel[q, : len(items)] = torch.as_tensor(list(items), dtype=torch.int64)
    bad = (rel < -1).any(1)
    if pool_size is not None:
        bad |= (rel >= pool_size).any(1)
    if bad.any():
        q = int(bad.nonzero()[0])
        raise ValueError(f"relevant[{q}] = {rel[q].tolist()}: indices must lie in [0, {pool_size}) (-1 = padding)")
    ordered = rel.sort(dim=1).values
    dup = ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any(1)
    if dup.any():
        q = int(dup.nonzero()[0])
        raise ValueError(f"relevant[{q}] = {rel[q].tolist()}: an item is listed twice")
    return rel


def ranking_metrics(
    scores: Tensor,
    relevant: Sequence[Sequence[int]] | Tensor,
    groups: Tensor | None = None,
    group_names: Sequence[str] | None = None,
    *,
    recall_at: Sequence[int] = (1, 10),
    ndcg_at: Sequence[int] = (10,),
    mrr_at: Sequence[int] = (10,),
    chunk_size: int | None = None,
    progress: bool = False,
) -> RankingMetrics:
    """Metrics from a precomputed (Q, N) score matrix; `groups` (N,) assigns pool items to sub-pools."""
    if scores.dim() != 2:
        raise ValueError(f"scores: expected a (queries, pool) matrix, got shape {tuple(scores.shape)}")
    n_queries, pool_size = scores.shape
    layout = _GroupLayout.build(groups, group_names, pool_size)

    def chunks(size: int) -> Iterator[tuple[int, Tensor]]:
        for start in range(0, n_queries, size):
            block = scores[start : start + size].float()
            yield start, block if layout.order is None else block[:, layout.order]

    return _run(chunks, n_queries, pool_size, relevant, layout, recall_at, ndcg_at, mrr_at, chunk_size, progress)


def ranking_metrics_from_embeddings(
    query_emb: Tensor,
    pool_emb: Tensor,
    relevant: Sequence[Sequence[int]] | Tensor,
    groups: Tensor | None = None,
    group_names: Sequence[str] | None = None,
    *,
    recall_at: Sequence[int] = (1, 10),
    ndcg_at: Sequence[int] = (10,),
    mrr_at: Sequence[int] = (10,),
    chunk_size: int | None = None,
    progress: bool = False,
) -> RankingMetrics:
    """Metrics for inner-product scores `query_emb @ pool_emb.T`, never materialising the full matrix."""
    if query_emb.dim() != 2 or pool_emb.dim() != 2 or query_emb.shape[1] != pool_emb.shape[1]:
        raise ValueError(
            f"embeddings: expected (Q, d) and (N, d) matrices, got {tuple(query_emb.shape)} and {tuple(pool_emb.shape)}"
        )
    n_queries, pool_size = query_emb.shape[0], pool_emb.shape[0]
    layout = _GroupLayout.build(groups, group_names, pool_size)
    pool_t = (pool_emb if layout.order is None else pool_emb[layout.order]).float().T.contiguous()
    queries = query_emb.float()
    for name, emb in (("query_emb", queries), ("pool_emb", pool_t)):
        if not bool(torch.isfinite(emb).all()):
            raise ValueError(f"{name} contains NaN or infinity")

    def chunks(size: int) -> Iterator[tuple[int, Tensor]]:
        for start in range(0, n_queries, size):
            yield start, queries[start : start + size] @ pool_t

    return _run(chunks, n_queries, pool_size, relevant, layout, recall_at, ndcg_at, mrr_at, chunk_size, progress,
                check_finite=False)


@dataclass
class _GroupLayout:
    """Sub-pools as contiguous column ranges; `order` permutes the pool when groups are interleaved."""

    names: tuple[str, ...]
    bounds: list[int]
    group_of: Tensor  # (N,) group of each pool item, in the caller's indexing
    order: Tensor | None  # new column j holds caller's item order[j]
    position: Tensor | None  # caller's item i sits at column position[i]

    @classmethod
    def build(cls, groups: Tensor | None, names: Sequence[str] | None, pool_size: int) -> _GroupLayout:
        if groups is None:
            if names is not None:
                raise ValueError("group_names given without groups")
            return cls((), [0, pool_size], torch.zeros(pool_size, dtype=torch.int64), None, None)
        groups = torch.as_tensor(groups, dtype=torch.int64)
        if groups.shape != (pool_size,):
            raise ValueError(f"groups: expected shape ({pool_size},) (one group per pool item), got {tuple(groups.shape)}")
        n_groups = int(groups.max()) + 1 if pool_size else 0
        if pool_size and int(groups.min()) < 0:
            raise ValueError("groups: ids must be >= 0")
        names = tuple(str(g) for g in range(n_groups)) if names is None else tuple(names)
        if len(names) < n_groups:
            raise ValueError(f"group_names has {len(names)} names but groups uses ids up to {n_groups - 1}")
        if "all" in names:
            raise ValueError("group_names: 'all' is reserved for the whole pool")
        counts = torch.bincount(groups, minlength=len(names))
        bounds = [0, *torch.cumsum(counts, 0).tolist()]
        if bool((groups[1:] >= groups[:-1]).all()):
            return cls(names, bounds, groups, None, None)
        order = torch.argsort(groups, stable=True)
        position = torch.empty_like(order)
        position[order] = torch.arange(pool_size)
        return cls(names, bounds, groups, order, position)


def _run(
    chunks: Callable[[int], Iterator[tuple[int, Tensor]]],
    n_queries: int,
    pool_size: int,
    relevant: Sequence[Sequence[int]] | Tensor,
    layout: _GroupLayout,
    recall_at: Sequence[int],
    ndcg_at: Sequence[int],
    mrr_at: Sequence[int],
    chunk_size: int | None,
    progress: bool,
    check_finite: bool = True,
) -> RankingMetrics:
    """Drive `_chunk` over the query chunks that `chunks(size)` yields and assemble per-pool metrics."""
    rel = pad_relevance(relevant, pool_size)
    if rel.shape[0] != n_queries:
        raise ValueError(f"relevant has {rel.shape[0]} rows but there are {n_queries} queries")
    valid = rel >= 0
    safe = rel.clamp(min=0)
    rel_group = torch.where(valid, layout.group_of[safe], 0)
    rel_col = safe if layout.position is None else layout.position[safe]
    width = rel.shape[1]
    if chunk_size is None:
        widest = max(b - a for a, b in zip(layout.bounds[:-1], layout.bounds[1:], strict=True)) if pool_size else 1
        # Bounded: the (C, R, group) comparisons, the (C, R, R) relevant-vs-relevant ones, the (C, N) scores.
        chunk_size = max(1, min(256, _MAX_BLOCK_ELEMENTS // max(1, width * widest, width * width, pool_size)))
    n_groups = len(layout.names)
    pools = (*layout.names, "all")
    names = ["AP", *(f"R@{k}" for k in recall_at), *(f"nDCG@{k}" for k in ndcg_at), *(f"MRR@{k}" for k in mrr_at)]
    values = {name: torch.empty(n_queries, len(pools), dtype=torch.float64) for name in names}
    n_relevant = torch.empty(n_queries, len(pools), dtype=torch.int64)
    rank = torch.zeros_like(rel)
    rank_in_group = torch.zeros_like(rel)
    max_k = max([*ndcg_at, 1])
    ideal = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(1 / torch.log2(torch.arange(2, max_k + 2, dtype=torch.float64)), 0)])

    bar = tqdm(total=n_queries, desc="ranking metrics", unit="query", disable=not progress)
    for start, scores in chunks(chunk_size):
        stop = start + scores.shape[0]
        if check_finite and not bool(torch.isfinite(scores).all()):
            raise ValueError(f"scores of queries {start}..{stop - 1} contain NaN or infinity")
        out = _chunk(scores, rel_col[start:stop], valid[start:stop], rel_group[start:stop], layout.bounds)
        rank[start:stop], rank_in_group[start:stop] = out["rank_all"], out["rank_own"]
        masks = []
        if n_groups:
            onehot = torch.nn.functional.one_hot(rel_group[start:stop], n_groups).to(torch.float64)
            masks.append((onehot * valid[start:stop, :, None], "own"))
        masks.append((valid[start:stop, :, None].to(torch.float64), "all"))
        cols = []
        for mask, which in masks:
            r = out[f"rank_{which}"][:, :, None].to(torch.float64).clamp(min=1)  # padding: masked out anyway
            n = mask.sum(1)
            col = {"n": n, "AP": (mask * out[f"prec_{which}"][:, :, None]).sum(1) / n}
            for k in recall_at:
                col[f"R@{k}"] = (mask * (r <= k)).sum(1) / n
            for k in ndcg_at:
                dcg = (mask * (r <= k) / torch.log2(r + 1)).sum(1)
                col[f"nDCG@{k}"] = dcg / ideal[n.long().clamp(max=k)]
            for k in mrr_at:
                best = (mask * (r <= k) / r).amax(1)
                col[f"MRR@{k}"] = torch.where(n > 0, best, torch.nan)
            cols.append(col)
        n_relevant[start:stop] = torch.cat([c["n"] for c in cols], 1).long()
        for name in names:
            values[name][start:stop] = torch.cat([c[name] for c in cols], 1)
        bar.update(stop - start)
    bar.close()
    return RankingMetrics(pools, values, n_relevant, rel, rank, rank_in_group)


def _chunk(scores: Tensor, rel_col: Tensor, valid: Tensor, rel_group: Tensor, bounds: list[int]) -> dict[str, Tensor]:
    """Precision at each relevant item and its pessimistic rank, in its own group and in the whole pool."""
    s_rel = scores.gather(1, rel_col)  # (C, R): bit-identical to the pool scores they are compared with
    per_group = torch.empty(*s_rel.shape, len(bounds) - 1, dtype=torch.int32)  # (C, R, G)
    for g, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        # #items of group g scoring >= each relevant item; int32 sums are ~2x faster than the default int64
        per_group[:, :, g] = (scores[:, None, lo:hi] >= s_rel[:, :, None]).sum(-1, dtype=torch.int32)
    ge_all = per_group.sum(-1, dtype=torch.int32)
    ge_own = per_group.gather(2, rel_group[:, :, None]).squeeze(2)

    s_i, s_j = s_rel[:, :, None], s_rel[:, None, :]
    other = valid[:, None, :]
    earlier = torch.ones(s_rel.shape[1], s_rel.shape[1], dtype=torch.bool).tril(-1)  # j listed before i
    same = rel_group[:, :, None] == rel_group[:, None, :]
    ge_rr = (s_j >= s_i) & other
    ahead_rr = ((s_j > s_i) | ((s_j == s_i) & earlier)) & other  # relevant items ranked before i
    out = {}
    for which, ge, mask in (("all", ge_all, None), ("own", ge_own, same)):
        rel_ge = (ge_rr if mask is None else ge_rr & mask).sum(-1)
        rel_ahead = (ahead_rr if mask is None else ahead_rr & mask).sum(-1)
        out[f"rank_{which}"] = torch.where(valid, ge - rel_ge + rel_ahead + 1, 0)
        out[f"prec_{which}"] = torch.where(valid, rel_ge.double() / ge.clamp(min=1).double(), 0.0)
    return out


def ranked_list_metrics(
    ranking: dict[str, Sequence[str]],
    qrels: dict[str, dict[str, int]],
    *,
    ndcg_at: Sequence[int] = (10,),
    recall_at: Sequence[int] = (100,),
    mrr_at: Sequence[int] = (),
    no_relevant: str = "skip",
) -> dict[str, dict[str, float]]:
    """nDCG@k (gain = relevance grade), Recall@k and MRR@k of ranked doc-id lists against the FULL qrels.

    A judged-relevant document missing from the list counts as a miss; grade <= 0 is not relevant
    (gain 0, as trec_eval). A query of the qrels without any relevant document is left out
    (`no_relevant="skip"`: its metrics are undefined) or scores 0 (`"zero"`: trec_eval / BEIR).

    Computed exactly in double precision rather than with `torchmetrics.retrieval`, whose functions
    cast to float32 (`retrieval_recall`'s `.float()`, nDCG's float32 tie-averaging sums) and so differ
    from trec_eval's values in the 8th digit; they also see only the retrieved list, not the judged
    documents it misses. tests/test_beir.py checks both against pytrec_eval.
    """
    if no_relevant not in ("skip", "zero"):
        raise ValueError(f"no_relevant={no_relevant!r}: expected 'skip' or 'zero'")
    results: dict[str, dict[str, float]] = {}
    for qid, judged in qrels.items():
        gains = sorted((g for g in judged.values() if g > 0), reverse=True)
        if not gains:
            if no_relevant == "zero":
                results[qid] = {f"{name}@{k}": 0.0 for name, ks in (("nDCG", ndcg_at), ("R", recall_at), ("MRR", mrr_at)) for k in ks}
            continue
        docs = ranking.get(qid, ())
        row: dict[str, float] = {}
        for k in ndcg_at:
            dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(docs[:k]) if judged.get(d, 0) > 0)
            idcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:k]))
            row[f"nDCG@{k}"] = dcg / idcg
        for k in recall_at:
            row[f"R@{k}"] = sum(1 for d in set(docs[:k]) if judged.get(d, 0) > 0) / len(gains)
        for k in mrr_at:
            row[f"MRR@{k}"] = next((1 / (i + 1) for i, d in enumerate(docs[:k]) if judged.get(d, 0) > 0), 0.0)
        results[qid] = row
    return results
