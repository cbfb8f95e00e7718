"""MIRACL (Zhang et al. 2023) evaluation: monolingual passage retrieval from each language's Wikipedia.

The data (topics, qrels, corpus; local or from the hub) are read by `hybatch.data.miracl`. The corpus
is encoded into resumable on-disk shards, searched top-k (FAISS or exact shard scan), and
nDCG@10 / Recall@k are computed against the FULL qrels: a relevant passage outside the top k is a miss.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hybatch.data.miracl import MIRACL_LANGUAGES, MiraclFormatError, MiraclLanguage, load_miracl_language
from hybatch.retrieval.index import DenseIndex, TextEncoder, encode_shards, search_shards
from hybatch.retrieval.metrics import ranked_list_metrics

log = logging.getLogger(__name__)

INDEX_KINDS = (*DenseIndex.KINDS, "shards")


def passage_text(title: str, text: str, template: str) -> str:
    return template.format(title=title, text=text).strip()


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
    progress: bool = True,
) -> dict[str, float]:
    """`nDCG@<ndcg_at>` and `R@<top_k>` (means over the queries with a relevant passage) for one language."""
    if index not in INDEX_KINDS:
        raise ValueError(f"MIRACL index={index!r}: expected one of {INDEX_KINDS}")
    passage_text("t", "x", passage_template)  # a bad template fails now, not after the queries are encoded
    missing = sorted(set(data.qrels) - set(data.queries))
    if missing:
        raise MiraclFormatError(f"MIRACL {data.lang}: qrels judge queries absent from the topics, e.g. {missing[:3]}")
    qids = [q for q in data.queries if any(rel > 0 for rel in data.qrels.get(q, {}).values())]
    if len(qids) < len(data.queries):
        log.info("MIRACL %s: %d of %d queries have no relevant passage and are not scored", data.lang, len(data.queries) - len(qids), len(data.queries))
    if not qids:
        raise MiraclFormatError(f"MIRACL {data.lang}: no query has a relevant passage in the qrels")

    documents = ((docid, passage_text(title, text, passage_template)) for docid, title, text in data.corpus())
    store = encode_shards(
        Path(work_dir) / "embeddings",
        documents,
        encoder,
        role="passage",
        fingerprint=f"miracl/{data.lang}/{data.source}/{passage_template}",
        shard_size=shard_size,
        batch_size=batch_size,
        dtype=dtype,
        progress=progress,
    )
    docids = store.ids()
    if len(set(docids)) != len(docids):
        dup = next(d for d, n in Counter(docids).items() if n > 1)
        raise MiraclFormatError(f"MIRACL {data.lang}: document id {dup!r} appears twice in the corpus ({data.source})")
    with torch.inference_mode():
        queries = encoder.encode([data.queries[q] for q in qids], "query", batch_size=batch_size, progress=progress)
    if index == "shards":
        _, hits = search_shards(store, queries, top_k, progress=progress)
    else:
        dense = DenseIndex(store.dim, index, **(index_options or {}))
        dense.add_shards(store, progress=progress)
        _, hits = dense.search(queries, top_k)
    ranking = {q: [docids[i] for i in row if i >= 0] for q, row in zip(qids, hits.tolist(), strict=True)}
    per_query = ranked_list_metrics(ranking, {q: data.qrels[q] for q in qids}, ndcg_at=(ndcg_at,), recall_at=(top_k,))
    keys = (f"nDCG@{ndcg_at}", f"R@{top_k}")
    return {key: sum(row[key] for row in per_query.values()) / len(per_query) for key in keys}


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
        if index not in INDEX_KINDS:
            raise ValueError(f"benchmark {name}: index={index!r}: expected one of {INDEX_KINDS}")
        if dtype not in ("float32", "float16"):
            raise ValueError(f"benchmark {name}: dtype={dtype!r}: expected float32 or float16")
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
