"""Mining one corpus, language by language, resumably.

Per language: the pool's passages and the questions are encoded into the memory-mapped shards of
`hybatch.retrieval.index` (a killed run resumes at the first unfinished shard; larger than RAM), the
pool is indexed (FAISS flat / IVF / HNSW, or an exact scan of the shards), each question in that
language searches it in blocks, and the kept rows are written to `<work_dir>/<lang>.negatives.json`
once the language is done. A rerun reuses every finished language whose settings and inputs match,
so the output of a resumed run is the same, byte for byte, as an uninterrupted run's.

Each question searches the pool of its own language: a passage-language row of a cross-lingual batch
gets the negatives its own language's question found (the translations of a question are one question).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from hybatch.atomic import atomic_write_text
from hybatch.data.corpus import ParallelCorpus
from hybatch.mining.pool import POOLS, LanguagePool, build_pool, passage_groups
from hybatch.mining.select import COUNT_KEYS, MiningFilters, select_negatives
from hybatch.retrieval.index import DenseIndex, EmbeddingShards, TextEncoder, encode_shards, search_shards
from hybatch.retrieval.runs import INDEX_KINDS

log = logging.getLogger(__name__)

_RESULT_FORMAT = 1


@dataclass(frozen=True)
class SearchSettings:
    """How the pool is encoded and searched (see conf/mine.yaml)."""

    index: str = "flat"
    index_options: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    shard_size: int = 100_000
    dtype: str = "float32"
    search_batch: int = 4096
    pool: str = "positives"

    def __post_init__(self) -> None:
        if self.index not in INDEX_KINDS:
            raise ValueError(f"index={self.index!r}: expected one of {INDEX_KINDS}")
        if self.index == "shards" and self.index_options:
            raise ValueError(f"index=shards takes no index_options, got {dict(self.index_options)}")
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"dtype={self.dtype!r}: expected float32 or float16")
        if self.pool not in POOLS:
            raise ValueError(f"pool={self.pool!r}: expected one of {POOLS}")
        for key in ("batch_size", "shard_size", "search_batch"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)}: expected a positive number")


@dataclass
class LanguageMined:
    """What one language gave: the kept pool rows per question (`examples[i]` -> `negatives[i]`), the
    pool's texts and the counts of COUNT_KEYS."""

    lang: str
    examples: list[int]
    negatives: list[list[int]]
    texts: list[str]
    counts: dict[str, int]
    seconds: float
    reused: bool


def mine_corpus(
    corpus: ParallelCorpus,
    languages: Sequence[str],
    encoder: TextEncoder,
    work_dir: Path,
    filters: MiningFilters,
    settings: SearchSettings,
    *,
    progress: bool = True,
) -> dict[str, LanguageMined]:
    """Mine every language of `languages` (in that order), each written to `work_dir` once done."""
    groups = passage_groups(corpus)
    work_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for lang in languages:
        out[lang] = _mine_language(corpus, build_pool(corpus, lang, groups, settings.pool), groups, encoder, work_dir,
                                   filters, settings, progress)  # fmt: skip
        c = out[lang].counts
        log.info(
            "%s: %d questions, %d pool passages: kept %d negatives; %d questions short of %d (%d missing); left out of "
            "the rank window: %d positives, %d same passage, %d over the score ceiling%s",
            lang, c["queries"], len(out[lang].texts), c["kept"], c["short_rows"], filters.num_negatives, c["missing"],
            c["positive"], c["same_passage"], c["score_ratio"], " (reused)" if out[lang].reused else "",
        )  # fmt: skip
    return out


def _mine_language(
    corpus: ParallelCorpus,
    pool: LanguagePool,
    groups: list[int],
    encoder: TextEncoder,
    work_dir: Path,
    filters: MiningFilters,
    settings: SearchSettings,
    progress: bool,
) -> LanguageMined:
    started = time.monotonic()
    lang = pool.lang
    examples = sorted(pool.positive_rows)
    queries = [corpus[i].translations[lang].query for i in examples]
    common = {"shard_size": settings.shard_size, "batch_size": settings.batch_size, "dtype": settings.dtype, "progress": progress}
    pool_digest = pool.fingerprint()
    passages = encode_shards(work_dir / f"passages-{lang}", ((str(r), t) for r, t in enumerate(pool.texts)), encoder,
                             role="passage", fingerprint=f"mine/{lang}/passages/{pool_digest}", total=len(pool.texts),
                             **common)  # fmt: skip
    query_digest = hashlib.sha256("\0".join(queries).encode("utf-8")).hexdigest()
    query_store = encode_shards(work_dir / f"queries-{lang}", ((str(i), q) for i, q in zip(examples, queries, strict=True)),
                                encoder, role="query", fingerprint=f"mine/{lang}/queries/{query_digest}", total=len(queries),
                                **common)  # fmt: skip
    positive_rows = np.asarray([pool.positive_rows[i] for i in examples], dtype=np.int64)
    own_groups = np.asarray([groups[i] for i in examples], dtype=np.int64)
    # What the result depends on beyond the embeddings (which encode_shards checked): a change reruns the search.
    digest = hashlib.sha256(json.dumps([pool_digest, query_digest, filters.num_negatives, list(filters.rank_range),
                                        filters.max_score_ratio, settings.index, dict(settings.index_options)]).encode())  # fmt: skip
    for array in (pool.groups, positive_rows, own_groups):
        digest.update(array.tobytes())
    fingerprint = digest.hexdigest()
    result_path = work_dir / f"{lang}.negatives.json"
    saved = _read_result(result_path, fingerprint)
    if saved is not None:
        return LanguageMined(lang, examples, saved["negatives"], pool.texts, saved["counts"], time.monotonic() - started, True)
    search = _searcher(passages, settings, progress)
    rows_reader = _RowReader(passages)
    counts: Counter = Counter({key: 0 for key in COUNT_KEYS})
    negatives: list[list[int]] = []
    done = 0
    with tqdm(total=len(examples), desc=f"searching {lang}", unit="query", disable=not progress) as bar:
        for arr in query_store.arrays():
            for lo in range(0, len(arr), settings.search_batch):
                q = np.array(arr[lo : lo + settings.search_batch], dtype=np.float32)  # a writable copy
                block = slice(done, done + len(q))
                scores, rows = search(q, filters.rank_range[1])
                positive_scores = np.einsum("ij,ij->i", q, rows_reader(positive_rows[block]))
                negatives += select_negatives(scores, rows, positive_scores, positive_rows[block], own_groups[block],
                                              pool.groups, filters, counts)  # fmt: skip
                done += len(q)
                bar.update(len(q))
    result = {"format": _RESULT_FORMAT, "fingerprint": fingerprint, "negatives": negatives, "counts": dict(counts)}
    atomic_write_text(result_path, json.dumps(result))
    return LanguageMined(lang, examples, negatives, pool.texts, dict(counts), time.monotonic() - started, False)


def _read_result(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """A finished language's result, or None when there is none or it was mined with other settings or inputs."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        log.warning("%s: unreadable, mining the language again", path)
        return None
    if saved.get("format") != _RESULT_FORMAT or saved.get("fingerprint") != fingerprint:
        log.info("%s was mined with other settings or inputs: mining the language again", path)
        return None
    return saved


def _searcher(store: EmbeddingShards, settings: SearchSettings, progress: bool) -> Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]:
    """`search(queries, k)` -> (scores, rows), best first, over the store: one index built per language."""
    if settings.index == "shards":
        return lambda q, k: search_shards(store, q, k, progress=False)
    try:
        index = DenseIndex(store.dim, settings.index, **dict(settings.index_options))
    except TypeError as err:
        raise ValueError(f"index_options={dict(settings.index_options)} for index={settings.index}: {err}") from err
    index.add_shards(store, progress=progress)
    return index.search


class _RowReader:
    """Float32 rows of a shard store by global row number, read from the memory maps."""

    def __init__(self, store: EmbeddingShards) -> None:
        self.arrays = list(store.arrays())
        self.offsets = np.cumsum([0, *(len(a) for a in self.arrays)])

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.arrays[0].shape[1]), dtype=np.float32)
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        for s in np.unique(shard):
            mask = shard == s
            out[mask] = self.arrays[s][rows[mask] - self.offsets[s]]
        return out
