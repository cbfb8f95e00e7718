"""Dense retrieval building blocks: exact ranking metrics, FAISS indexes, on-disk embedding shards."""

from hybatch.retrieval.index import DenseIndex, EmbeddingShards, TextEncoder, encode_shards, search_shards
from hybatch.retrieval.metrics import (
    RankingMetrics,
    pad_relevance,
    ranked_list_metrics,
    ranking_metrics,
    ranking_metrics_from_embeddings,
)

__all__ = [
    "DenseIndex",
    "EmbeddingShards",
    "RankingMetrics",
    "TextEncoder",
    "encode_shards",
    "pad_relevance",
    "ranked_list_metrics",
    "ranking_metrics",
    "ranking_metrics_from_embeddings",
    "search_shards",
]
