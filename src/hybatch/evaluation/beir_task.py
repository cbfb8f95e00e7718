"""Any local folder in the BEIR layout (`hybatch.data.beir_folder`), evaluated the way BEIR does.

BEIR's conventions (its `EvaluateRetrieval` over pytrec_eval):
- the queries are those judged in the split's qrels; nDCG@k uses the graded relevance as gain, R@k
  and MRR@k count a document with grade > 0 as relevant; a judged query with no relevant document
  scores 0 (trec_eval's value) and stays in the means;
- documents are embedded as `title + " " + text` (`passage_template`);
- `exclude_query_id` (BEIR's `ignore_identical_ids`, on by default there): a document whose id is the
  query's own is dropped from its results (datasets whose corpus holds the queries: ArguAna,
  Quora). BEIR drops it from a 1000-deep list; here the search goes one deeper than `top_k` and the
  list is cut at `top_k` after the drop, which is what BEIR's R@100 and nDCG@10 see.
The run (`<work dir>/run.trec`) holds what was scored, and the metrics equal pytrec_eval's on it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hybatch.data.beir_folder import BeirData, load_beir_folder
from hybatch.evaluation.ranked_retrieval import check_settings, evaluate_ranked_retrieval
from hybatch.retrieval.index import TextEncoder

log = logging.getLogger(__name__)


class BeirTask:
    """A BEIR folder for `hybatch.evaluation.runner`; metrics `nDCG@10`, `R@100`, `MRR@10` (by default)."""

    def __init__(
        self,
        name: str = "beir",
        data_dir: str | None = None,
        split: str = "test",
        passage_template: str = "{title} {text}",
        top_k: int = 100,
        ndcg_at: Sequence[int] = (10,),
        recall_at: Sequence[int] = (100,),
        mrr_at: Sequence[int] = (10,),
        exclude_query_id: bool = True,
        embeddings_dir: str | None = None,
        index: str = "flat",
        index_options: dict[str, Any] | None = None,
        shard_size: int = 100_000,
        dtype: str = "float32",
    ) -> None:
        # Checked before any model is loaded.
        if not data_dir:
            raise ValueError(f"benchmark {name}: needs a folder in the BEIR layout: benchmark.data_dir=<folder>")
        check_settings(name, index=index, dtype=dtype, passage_template=passage_template, top_k=top_k,
                       cutoffs=[*ndcg_at, *recall_at, *mrr_at])
        self.name, self.languages = name, []
        self.data_dir, self.split, self.passage_template = str(data_dir), split, passage_template
        self.top_k, self.ndcg_at, self.recall_at, self.mrr_at = top_k, list(ndcg_at), list(recall_at), list(mrr_at)
        self.exclude_query_id, self.embeddings_dir = exclude_query_id, embeddings_dir
        self.index, self.index_options, self.shard_size, self.dtype = index, dict(index_options or {}), shard_size, dtype
        self._data: BeirData | None = None

    def prepare(self) -> None:
        """Read the queries and qrels (and locate the corpus) before any model is loaded."""
        self._data = load_beir_folder(self.data_dir, self.split)
        log.info("%s: %d judged queries in %s/qrels/%s.tsv", self.name, len(self._data.queries), self.data_dir, self.split)

    def evaluate(self, encoder: TextEncoder, *, batch_size: int, work_dir: Path, progress: bool = True) -> dict[str, float]:
        """The means over the judged queries; the run goes to `<work_dir>/run.trec`, the shards to
        `embeddings_dir` (default `<work_dir>/embeddings`)."""
        if self._data is None:
            self.prepare()
        data = self._data
        metrics = evaluate_ranked_retrieval(
            data.queries,
            data.qrels,
            data.corpus,
            encoder,
            Path(self.embeddings_dir) if self.embeddings_dir else Path(work_dir) / "embeddings",
            Path(work_dir) / "run.trec",
            name=self.name,
            fingerprint=f"beir/{data.source}",
            passage_template=self.passage_template,
            top_k=self.top_k,
            ndcg_at=self.ndcg_at,
            recall_at=self.recall_at,
            mrr_at=self.mrr_at,
            no_relevant="zero",
            exclude_query_id=self.exclude_query_id,
            index=self.index,
            index_options=self.index_options,
            batch_size=batch_size,
            shard_size=self.shard_size,
            dtype=self.dtype,
            progress=progress,
        )
        log.info("%s: %s (run file %s)", self.name, {k: round(v, 4) for k, v in metrics.items()}, Path(work_dir) / "run.trec")
        return metrics
