"""Corpus retrieval evaluation shared by MIRACL and BEIR folders: encode, search, write the run, score.

The corpus is encoded into resumable on-disk shards (`hybatch.retrieval.index`), searched top-k
(FAISS or an exact shard scan), the ranked lists are written as a TREC run file in trec_eval's
order (`hybatch.retrieval.runs`), and the metrics are computed on exactly those lists against the
FULL qrels: a relevant document outside the top k is a miss. So the reported numbers equal trec_eval's
(pytrec_eval's) on the run file.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from hybatch.data.beir_folder import Document
from hybatch.retrieval.index import TextEncoder, encode_shards
from hybatch.retrieval.metrics import ranked_list_metrics
from hybatch.retrieval.runs import INDEX_KINDS, ranked_hits, search_stores, write_trec_run

log = logging.getLogger(__name__)



class RetrievalDataError(ValueError):
    """The corpus, queries or qrels of a retrieval benchmark do not fit together."""


def passage_text(title: str, text: str, template: str) -> str:
    return template.format(title=title, text=text).strip()


def check_settings(
    name: str, *, index: str, dtype: str, passage_template: str, top_k: int, cutoffs: Sequence[int] = ()
) -> None:
    """Config errors a benchmark should raise when built, before any model is loaded."""
    if index not in INDEX_KINDS:
        raise ValueError(f"benchmark {name}: index={index!r}: expected one of {INDEX_KINDS}")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"benchmark {name}: dtype={dtype!r}: expected float32 or float16")
    try:
        passage_text("t", "x", passage_template)
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"benchmark {name}: passage_template={passage_template!r} may use only {{title}} and {{text}} ({err!r})") from err
    if top_k < 1 or any(k < 1 for k in cutoffs):
        raise ValueError(f"benchmark {name}: top_k={top_k} and the metric cutoffs {list(cutoffs)} must be positive")


def evaluate_ranked_retrieval(
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    corpus: Callable[[], Iterator[Document]],
    encoder: TextEncoder,
    embeddings_dir: str | os.PathLike,
    run_path: str | os.PathLike,
    *,
    name: str,
    fingerprint: str,
    passage_template: str = "{title} {text}",
    top_k: int = 100,
    ndcg_at: Sequence[int] = (10,),
    recall_at: Sequence[int] = (100,),
    mrr_at: Sequence[int] = (),
    no_relevant: str = "skip",
    exclude_query_id: bool = False,
    index: str = "flat",
    index_options: Mapping[str, Any] | None = None,
    batch_size: int = 64,
    shard_size: int = 100_000,
    dtype: str = "float32",
    run_tag: str = "hybatch",
    progress: bool = True,
) -> dict[str, float]:
    """Means over `queries` of `nDCG@k`, `R@k`, `MRR@k`; the run (`run_path`) holds every query's top `top_k`.

    `no_relevant`: "skip" leaves a query with no relevant document out of the means, "zero" scores it 0
    (trec_eval / BEIR). `exclude_query_id`: see `hybatch.retrieval.runs.ranked_hits`.
    """
    check_settings(name, index=index, dtype=dtype, passage_template=passage_template, top_k=top_k,
                   cutoffs=[*ndcg_at, *recall_at, *mrr_at])
    if not queries:
        raise RetrievalDataError(f"{name}: no query to evaluate")
    unjudged = [q for q in queries if q not in qrels]
    if unjudged:
        raise RetrievalDataError(f"{name}: queries without qrels, e.g. {unjudged[:3]}")
    documents = ((docid, passage_text(title, text, passage_template)) for docid, title, text in corpus())
    store = encode_shards(
        embeddings_dir, documents, encoder, role="passage", fingerprint=f"{fingerprint}/{passage_template}",
        shard_size=shard_size, batch_size=batch_size, dtype=dtype, progress=progress,
    )  # fmt: skip
    docids = store.ids()
    if len(set(docids)) != len(docids):
        dup = next(d for d, n in Counter(docids).items() if n > 1)
        raise RetrievalDataError(f"{name}: document id {dup!r} appears twice in the corpus ({fingerprint})")
    known = set(docids)
    absent = sum(1 for q in queries for d, g in qrels[q].items() if g > 0 and d not in known)
    if absent:
        log.warning("%s: %d relevant judgments name documents absent from the corpus (counted as misses)", name, absent)
    qids = list(queries)
    with torch.inference_mode():
        query_emb = encoder.encode([queries[q] for q in qids], "query", batch_size=batch_size, progress=progress)
    depth = top_k + 1 if exclude_query_id else top_k
    scores, rows = search_stores([store], query_emb, depth, index=index, index_options=index_options, progress=progress)
    run = ranked_hits(qids, docids, scores, rows, top_k=top_k, exclude_query_id=exclude_query_id)
    write_trec_run(run_path, run, run_tag)
    per_query = ranked_list_metrics(
        {q: [doc for doc, _ in hits] for q, hits in run.items()}, {q: dict(qrels[q]) for q in qids},
        ndcg_at=ndcg_at, recall_at=recall_at, mrr_at=mrr_at, no_relevant=no_relevant,
    )  # fmt: skip
    if not per_query:
        raise RetrievalDataError(f"{name}: no query has a relevant document in the qrels")
    if len(per_query) < len(qids):
        log.info("%s: %d of %d queries have no relevant document and are not scored", name, len(qids) - len(per_query), len(qids))
    keys = [*(f"nDCG@{k}" for k in ndcg_at), *(f"R@{k}" for k in recall_at), *(f"MRR@{k}" for k in mrr_at)]
    return {key: sum(row[key] for row in per_query.values()) / len(per_query) for key in keys}
