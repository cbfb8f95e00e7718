"""MIRACL (Zhang et al. 2023) evaluation: monolingual passage retrieval from each language's Wikipedia.

The data (topics, qrels, corpus; local or from the hub) are read by `hybatch.data.miracl_files`; encoding,
search (FAISS or exact shard scan), the TREC run file and nDCG@10 / Recall@k against the FULL qrels
are `hybatch.evaluation.ranked_retrieval`'s, the path BEIR folders take too.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hybatch.data.miracl_files import (
    MIRACL_LANGUAGES,
    MiraclFormatError,
    MiraclLanguage,
    load_miracl_language,
)
from hybatch.evaluation.ranked_retrieval import check_settings, evaluate_ranked_retrieval
from hybatch.retrieval.index import TextEncoder

log = logging.getLogger(__name__)


def evaluate_miracl_language(
    data: MiraclLanguage,
    encoder: TextEncoder,
    work_dir: str | os.PathLike,
    *,
    passage_template: str = "{title} {text}",
    top_k: int = 100,
    ndcg_at: int = 10,
    index: str = "flat",
    index_options: dict[str, Any] | None = None,
    batch_size: int = 64,
    shard_size: int = 100_000,
    dtype: str = "float32",
    run_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """`nDCG@<ndcg_at>` and `R@<top_k>` (means over the queries with a relevant passage) for one language.

    Shards go to `<work_dir>/embeddings`, the TREC run to `run_path` (default `<work_dir>/run.trec`).
    """
    check_settings(f"MIRACL {data.lang}", index=index, dtype=dtype, passage_template=passage_template, top_k=top_k,
                   cutoffs=(ndcg_at,))  # a bad setting fails now, not after the queries are encoded
    missing = sorted(set(data.qrels) - set(data.queries))
    if missing:
        raise MiraclFormatError(f"MIRACL {data.lang}: qrels judge queries absent from the topics, e.g. {missing[:3]}")
    qids = [q for q in data.queries if any(rel > 0 for rel in data.qrels.get(q, {}).values())]
    if len(qids) < len(data.queries):
        log.info("MIRACL %s: %d of %d queries have no relevant passage and are not scored", data.lang, len(data.queries) - len(qids), len(data.queries))
    if not qids:
        raise MiraclFormatError(f"MIRACL {data.lang}: no query has a relevant passage in the qrels")
    return evaluate_ranked_retrieval(
        {q: data.queries[q] for q in qids},
        data.qrels,
        data.corpus,
        encoder,
        Path(work_dir) / "embeddings",
        run_path or Path(work_dir) / "run.trec",
        name=f"MIRACL {data.lang}",
        fingerprint=f"miracl/{data.lang}/{data.source}",
        passage_template=passage_template,
        top_k=top_k,
        ndcg_at=(ndcg_at,),
        recall_at=(top_k,),
        index=index,
        index_options=index_options,
        batch_size=batch_size,
        shard_size=shard_size,
        dtype=dtype,
        progress=progress,
    )


class MiraclTask:
    """MIRACL for `hybatch.evaluation.runner`; metrics `<lang>/nDCG@10`, `<lang>/R@100`, `mean/...`."""

    def __init__(
        self,
        name: str = "miracl",
        languages: Sequence[str] = ("ar", "de", "en", "es", "hi", "ru", "th", "zh"),
        data_dir: str | None = None,
        source: str = "local",
        split: str = "dev",
        cache_dir: str | None = None,
        embeddings_dir: str | None = None,
        passage_template: str = "{title} {text}",
        top_k: int = 100,
        index: str = "flat",
        index_options: dict[str, Any] | None = None,
        shard_size: int = 100_000,
        dtype: str = "float32",
    ) -> None:
        unknown = [lang for lang in languages if lang not in MIRACL_LANGUAGES]
        if unknown:
            raise ValueError(f"benchmark {name}: MIRACL has no language {unknown}; it has {list(MIRACL_LANGUAGES)}")
        check_settings(name, index=index, dtype=dtype, passage_template=passage_template, top_k=top_k, cutoffs=(10,))
        # Checked before any model is loaded: a missing dataset should not cost an encoder load.
        if source == "local" and not data_dir:
            raise ValueError(
                f"benchmark {name}: source=local needs data_dir (benchmark.benchmarks.{name}.data_dir=<dir>, in the "
                f"official or the flat layout), or use source=hf"
            )
        if source == "hf" and importlib.util.find_spec("datasets") is None:
            raise ImportError(f"benchmark {name}: source=hf streams the corpus with `datasets`: pip install 'hybatch[miracl]'")
        if source not in ("local", "hf"):
            raise ValueError(f"benchmark {name}: source={source!r}: expected 'local' or 'hf'")
        self.name, self.languages = name, [str(lang) for lang in languages]
        self.data_dir, self.source, self.split, self.cache_dir = data_dir, source, split, cache_dir
        self.embeddings_dir, self.passage_template = embeddings_dir, passage_template
        self.top_k, self.index, self.index_options = top_k, index, dict(index_options or {})
        self.shard_size, self.dtype = shard_size, dtype
        self._data: dict[str, MiraclLanguage] = {}

    def prepare(self) -> None:
        """Read every language's topics and qrels (and locate its corpus) before any encoding."""
        self._data = {
            lang: load_miracl_language(lang, self.data_dir, split=self.split, source=self.source, cache_dir=self.cache_dir)
            for lang in self.languages
        }

    def evaluate(self, encoder: TextEncoder, *, batch_size: int, work_dir: Path, progress: bool = True) -> dict[str, float]:
        """Per language, then the macro-average `mean/...`; shards go to `embeddings_dir` (default: under work_dir)."""
        if not self._data:
            self.prepare()
        out: dict[str, float] = {}
        root = Path(self.embeddings_dir) if self.embeddings_dir else Path(work_dir)
        for lang in self.languages:
            metrics = evaluate_miracl_language(
                self._data[lang],
                encoder,
                root / lang,
                run_path=Path(work_dir) / lang / "run.trec",
                passage_template=self.passage_template,
                top_k=self.top_k,
                index=self.index,
                index_options=self.index_options,
                batch_size=batch_size,
                shard_size=self.shard_size,
                dtype=self.dtype,
                progress=progress,
            )
            out.update({f"{lang}/{k}": v for k, v in metrics.items()})
            log.info("MIRACL %s: %s", lang, {k: round(v, 4) for k, v in metrics.items()})
        for key in ("nDCG@10", f"R@{self.top_k}"):
            out[f"mean/{key}"] = sum(out[f"{lang}/{key}"] for lang in self.languages) / len(self.languages)
        return out
