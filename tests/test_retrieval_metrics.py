"""The ranking kernels against sklearn (AP with ties) and pytrec_eval (R@k, nDCG@10, MRR@10)."""

from __future__ import annotations

import math

import pytest
import pytrec_eval
import torch
from sklearn.metrics import average_precision_score

from hybatch.retrieval import (
    pad_relevance,
    ranked_list_metrics,
    ranking_metrics,
    ranking_metrics_from_embeddings,
)


def _random_case(seed: int, n_queries: int = 40, pool: int = 60, levels: int | None = None, max_rel: int = 5):
    gen = torch.Generator().manual_seed(seed)
    if levels is None:
        scores = torch.randn(n_queries, pool, generator=gen)
    else:  # few distinct values: many ties, including between relevant items
        scores = torch.randint(0, levels, (n_queries, pool), generator=gen).float()
    relevant = [
        torch.randperm(pool, generator=gen)[: int(torch.randint(1, max_rel + 1, (1,), generator=gen))].tolist()
        for _ in range(n_queries)
    ]
    return scores, relevant


@pytest.mark.parametrize("levels", [None, 3, 7])
def test_average_precision_matches_sklearn_with_ties(levels):
    scores, relevant = _random_case(0, levels=levels)
    out = ranking_metrics(scores, relevant, chunk_size=7)
    assert out.pools == ("all",)
    for q, rel in enumerate(relevant):
        y = torch.zeros(scores.shape[1], dtype=torch.int64)
        y[rel] = 1
        expected = average_precision_score(y.numpy(), scores[q].numpy())
        assert out.values["AP"][q, 0].item() == pytest.approx(expected, abs=1e-12)


def test_subpool_average_precision_matches_sklearn_on_interleaved_groups():
    scores, relevant = _random_case(1, levels=4)
    groups = torch.randint(0, 3, (scores.shape[1],), generator=torch.Generator().manual_seed(2))
    out = ranking_metrics(scores, relevant, groups, ["a", "b", "c"], chunk_size=5)
    for q, rel in enumerate(relevant):
        for g, name in enumerate(["a", "b", "c"]):
            members = (groups == g).nonzero().squeeze(1)
            y = torch.isin(members, torch.tensor(rel)).long()
            value = out.values["AP"][q, out.column(name)].item()
            if y.sum() == 0:
                assert math.isnan(value)
                assert out.n_relevant[q, out.column(name)] == 0
            else:
                assert value == pytest.approx(average_precision_score(y.numpy(), scores[q, members].numpy()), abs=1e-12)


def test_recall_ndcg_mrr_and_map_match_pytrec_eval_without_ties():
    scores, relevant = _random_case(3, n_queries=30, pool=80, max_rel=12)
    out = ranking_metrics(scores, relevant, recall_at=(1, 5, 10), ndcg_at=(10,), mrr_at=(10,), chunk_size=4)
    qrels = {f"q{q}": {f"d{d}": 1 for d in rel} for q, rel in enumerate(relevant)}
    run = {f"q{q}": {f"d{d}": float(scores[q, d]) for d in range(scores.shape[1])} for q in range(scores.shape[0])}
    top10 = {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:10]) for q, docs in run.items()}
    full = pytrec_eval.RelevanceEvaluator(qrels, {"map", "recall.1,5,10", "ndcg_cut.10"}).evaluate(run)
    cut = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    for q in range(scores.shape[0]):
        ref = full[f"q{q}"]
        assert out.values["AP"][q, 0].item() == pytest.approx(ref["map"], abs=1e-9)
        for k in (1, 5, 10):
            assert out.values[f"R@{k}"][q, 0].item() == pytest.approx(ref[f"recall_{k}"], abs=1e-9)
        assert out.values["nDCG@10"][q, 0].item() == pytest.approx(ref["ndcg_cut_10"], abs=1e-9)
        assert out.values["MRR@10"][q, 0].item() == pytest.approx(cut[f"q{q}"]["recip_rank"], abs=1e-9)


def test_ranks_are_pessimistic_distinct_and_per_group():
    # pool:      0    1    2    3    4    5
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.5, 0.1, 0.7]])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    # relevant 2 and 3 tie with the non-relevant 1; 3 is listed first, so it goes first among the tied relevant.
    out = ranking_metrics(scores, [[3, 2]], groups, ["x", "y"])
    assert out.rank.tolist() == [[4, 5]]  # 0, 5 and 1 are ahead of both
    assert out.rank_in_group.tolist() == [[2, 3]]  # group y: 5 ahead of 3; group x: 0 and 1 ahead of 2
    assert out.values["R@1"][0].tolist() == [0.0, 0.0, 0.0]
    assert out.values["MRR@10"][0].tolist() == pytest.approx([1 / 3, 1 / 2, 1 / 4])
    # sklearn-style AP on the whole pool: both relevant at the threshold 0.5 -> precision 2/5.
    assert out.values["AP"][0, out.column("all")].item() == pytest.approx(2 / 5)


def test_embeddings_equal_precomputed_scores_and_padding():
    gen = torch.Generator().manual_seed(4)
    q, p = torch.randn(25, 16, generator=gen), torch.randn(50, 16, generator=gen)
    groups = torch.arange(50) % 4  # interleaved: exercises the internal permutation
    relevant = [[i % 50, (i * 7 + 1) % 50] if i % 3 else [i % 50] for i in range(25)]
    a = ranking_metrics(q @ p.T, relevant, groups, chunk_size=6)
    b = ranking_metrics_from_embeddings(q, p, pad_relevance(relevant), groups, chunk_size=11)
    for name in a.values:
        assert torch.allclose(a.values[name], b.values[name], equal_nan=True)
    assert torch.equal(a.rank, b.rank) and torch.equal(a.rank_in_group, b.rank_in_group)
    assert (a.rank[a.relevant < 0] == 0).all()


def test_bad_input_is_rejected_with_a_clear_message():
    scores = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"relevant\[1\].*\[0, 5\)"):
        ranking_metrics(scores, [[0], [5]])
    with pytest.raises(ValueError, match="listed twice"):
        ranking_metrics(scores, [[0, 0], [1]])
    with pytest.raises(ValueError, match="NaN"):
        ranking_metrics(torch.full((2, 5), math.nan), [[0], [1]])
    with pytest.raises(ValueError, match="3 rows"):
        ranking_metrics(scores, [[0], [1], [2]])


def test_ranked_list_metrics_use_full_qrels_and_skip_unjudged():
    qrels = {"a": {"d1": 1, "d2": 1, "d9": 0}, "b": {"d3": 0}}
    out = ranked_list_metrics({"a": ["d2", "d9", "d5"]}, qrels, ndcg_at=(2,), recall_at=(3,))
    assert set(out) == {"a"}  # b has no relevant document
    assert out["a"]["R@3"] == pytest.approx(0.5)  # d1 was never retrieved
    assert out["a"]["nDCG@2"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
