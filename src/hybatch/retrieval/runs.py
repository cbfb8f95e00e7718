"""Ranked runs: top-k search over encoded corpora and TREC run files (MIRACL, BEIR and `hybatch-search`).

A run maps each query id to its hits, best first, in the order trec_eval gives a run file: score
descending, ties broken by document id descending. Scores are written with 9 significant digits,
which round-trip float32 exactly, so the file read back has the same order and the same ties as the
run in memory, and metrics computed on the run equal trec_eval's (pytrec_eval's) on the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybatch.atomic import atomic_open
from hybatch.retrieval.index import DenseIndex, EmbeddingShards, search_shards

INDEX_KINDS = (*DenseIndex.KINDS, "shards")

Hit = tuple[str, float]
Run = dict[str, list[Hit]]


class RunFormatError(ValueError):
    """A TREC run file is malformed."""


def search_stores(
    stores: Sequence[EmbeddingShards],
    queries: np.ndarray | torch.Tensor,
    top_k: int,
    *,
    index: str = "flat",
    index_options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, rows) over the stores' rows taken in order, as one corpus; row -1 is no hit (IVF).

    `index`: `flat` (exact, in RAM), `ivf` / `hnsw` (approximate FAISS; `index_options` are
    `DenseIndex`'s keywords), or `shards` (exact scan of the memory-mapped shards: RAM for one block).
    """
    if index not in INDEX_KINDS:
        raise ValueError(f"index={index!r}: expected one of {INDEX_KINDS}")
    if not stores:
        raise ValueError("search_stores: no embedding store to search")
    if top_k < 1:
        raise ValueError(f"top_k={top_k}: expected a positive number of hits")
    if index == "shards":
        if index_options:
            raise ValueError(f"index=shards takes no index_options, got {dict(index_options)}")
        return _merge([search_shards(store, queries, top_k, progress=progress) for store in stores], stores, top_k)
    try:
        dense = DenseIndex(stores[0].dim, index, **dict(index_options or {}))
    except TypeError as err:
        raise ValueError(f"index_options={dict(index_options or {})} for index={index}: {err}") from err
    for store in stores:
        dense.add_shards(store, progress=progress)
    return dense.search(queries, top_k)


def _merge(parts: list[tuple[np.ndarray, np.ndarray]], stores: Sequence[EmbeddingShards], top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-store exact top-k lists as one top-k over the concatenated rows."""
    offsets = np.cumsum([0, *(len(store) for store in stores[:-1])])
    scores = torch.from_numpy(np.concatenate([s for s, _ in parts], 1))
    rows = torch.from_numpy(np.concatenate([r + off for (_, r), off in zip(parts, offsets, strict=True)], 1))
    best, pos = scores.topk(min(top_k, scores.shape[1]), dim=1)
    return best.numpy(), rows.gather(1, pos).numpy()


def ranked_hits(
    qids: Sequence[str],
    docids: Sequence[str],
    scores: np.ndarray,
    rows: np.ndarray,
    *,
    top_k: int,
    exclude_query_id: bool = False,
) -> Run:
    """Search results as a run: hits in trec_eval order, at most `top_k` per query.

    `exclude_query_id`: drop the document whose id is the query's own (BEIR's `ignore_identical_ids`,
    for corpora that hold the queries, e.g. ArguAna and Quora); search one more than `top_k` for it.
    """
    if len(qids) != len(scores) or scores.shape != rows.shape:
        raise ValueError(f"{len(qids)} query ids for scores {scores.shape} and rows {rows.shape}")
    run: Run = {}
    for qid, row_scores, row_ids in zip(qids, scores.tolist(), rows.tolist(), strict=True):
        hits = [(docids[r], float(np.float32(s))) for s, r in zip(row_scores, row_ids, strict=True) if r >= 0]
        if exclude_query_id:
            hits = [hit for hit in hits if hit[0] != qid]
        run[qid] = sorted(hits, key=lambda hit: (hit[1], hit[0]), reverse=True)[:top_k]
    return run


def write_trec_run(path: str | os.PathLike, run: Mapping[str, Sequence[Hit]], tag: str = "hybatch") -> Path:
    """`qid Q0 docid rank score tag` lines (rank from 1), written atomically; returns the path."""
    if not tag or re.search(r"\s", tag):
        raise ValueError(f"run tag {tag!r}: expected a non-empty word without spaces")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        for qid, hits in run.items():
            for field in (qid, *(doc for doc, _ in hits)):
                if not field or re.search(r"\s", field):
                    raise RunFormatError(f"{path}: id {field!r} cannot be written to a TREC run (empty or with whitespace)")
            f.writelines(f"{qid} Q0 {doc} {rank} {score:.9g} {tag}\n" for rank, (doc, score) in enumerate(hits, 1))
    return path


def read_trec_run(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """A TREC run file as `{qid: {docid: score}}` (pytrec_eval's run format)."""
    run: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 6:
                raise RunFormatError(f"{path}:{n}: expected 'qid Q0 docid rank score tag', got {line.rstrip()[:80]!r}")
            qid, _, doc, _, score, _ = parts
            try:
                value = float(score)
            except ValueError:
                raise RunFormatError(f"{path}:{n}: score {score!r} is not a number") from None
            if doc in run.setdefault(qid, {}):
                raise RunFormatError(f"{path}:{n}: document {doc!r} appears twice for query {qid!r}")
            run[qid][doc] = value
    return run
