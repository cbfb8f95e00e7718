"""MIRACL (Zhang et al. 2023): monolingual passage retrieval from each language's Wikipedia.

Data sources:
- a local directory in the official layout (`miracl-v1.0-<lang>/topics/topics.miracl-v1.0-<lang>-<split>.tsv`,
  `miracl-v1.0-<lang>/qrels/qrels.miracl-v1.0-<lang>-<split>.tsv`, `miracl-corpus-v1.0-<lang>/docs-*.jsonl[.gz]`),
  or a flat one (`<lang>/topics.tsv`, `<lang>/qrels.tsv`, `<lang>/corpus*.jsonl[.gz]` or `<lang>/corpus/*.jsonl[.gz]`);
- the Hugging Face hub (`source="hf"`): topics and qrels downloaded from `miracl/miracl`, the corpus
  streamed from `miracl/miracl-corpus` with `datasets` (optional: `pip install hybatch[miracl]`).

The corpus is encoded into resumable on-disk shards, searched top-k (FAISS or exact shard scan), and
nDCG@10 / Recall@k are computed against the FULL qrels: a relevant passage outside the top k is a miss.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hybatch.retrieval.index import DenseIndex, TextEncoder, encode_shards, search_shards
from hybatch.retrieval.metrics import ranked_list_metrics

log = logging.getLogger(__name__)

MIRACL_LANGUAGES = ("ar", "bn", "de", "en", "es", "fa", "fi", "fr", "hi", "id", "ja", "ko", "ru", "sw", "te", "th", "yo", "zh")
HF_TOPICS_REPO = "miracl/miracl"
HF_CORPUS_REPO = "miracl/miracl-corpus"
INDEX_KINDS = (*DenseIndex.KINDS, "shards")

Document = tuple[str, str, str]  # docid, title, text


class MiraclFormatError(ValueError):
    """A MIRACL file is missing or malformed."""


@dataclass
class MiraclLanguage:
    """Queries and qrels of one language and split, and a re-iterable view of its corpus."""

    lang: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    corpus: Callable[[], Iterator[Document]]
    source: str  # where the corpus comes from: part of the embedding cache's fingerprint


def read_topics(path: str | os.PathLike) -> dict[str, str]:
    """`qid<TAB>query` lines."""
    topics: dict[str, str] = {}
    for n, line in enumerate(_lines(path), 1):
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0]:
            raise MiraclFormatError(f"{path}:{n}: expected 'query_id<TAB>query text', got {line[:80]!r}")
        if parts[0] in topics:
            raise MiraclFormatError(f"{path}:{n}: query id {parts[0]!r} appears twice")
        topics[parts[0]] = parts[1]
    return topics


def read_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """TREC qrels: `qid Q0 docid relevance` lines (tabs or spaces)."""
    qrels: dict[str, dict[str, int]] = {}
    for n, line in enumerate(_lines(path), 1):
        parts = line.split()
        if len(parts) != 4 or not re.fullmatch(r"-?\d+", parts[3]):
            raise MiraclFormatError(f"{path}:{n}: expected 'query_id Q0 doc_id relevance(int)', got {line[:80]!r}")
        qrels.setdefault(parts[0], {})[parts[2]] = int(parts[3])
    return qrels


def _lines(path: str | os.PathLike) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if line.strip():
                yield line


def iter_jsonl_corpus(paths: Sequence[Path]) -> Iterator[Document]:
    """Documents of JSON-lines files (optionally gzipped), each line `{"docid", "title", "text"}`."""
    for path in paths:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield _document(line, f"{path}:{n}")


def _document(line: str | dict[str, Any], where: str) -> Document:
    try:
        doc = json.loads(line) if isinstance(line, str) else line
    except json.JSONDecodeError as err:
        raise MiraclFormatError(f"{where}: invalid JSON ({err.msg})") from err
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in ("docid", "title", "text")):
        raise MiraclFormatError(f"{where}: expected an object with string fields docid, title, text")
    return doc["docid"], doc["title"], doc["text"]


def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _corpus_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz"))] if folder.is_dir() else []
    return sorted(files, key=_natural_key)


def _local_files(lang: str, data_dir: Path, split: str) -> tuple[Path, Path, list[Path]]:
    official = data_dir / f"miracl-v1.0-{lang}"
    if official.is_dir():
        topics = official / "topics" / f"topics.miracl-v1.0-{lang}-{split}.tsv"
        qrels = official / "qrels" / f"qrels.miracl-v1.0-{lang}-{split}.tsv"
        corpus = _corpus_files(data_dir / f"miracl-corpus-v1.0-{lang}")
        corpus_hint = f"{data_dir / f'miracl-corpus-v1.0-{lang}'}/docs-*.jsonl.gz"
    else:
        flat = data_dir / lang
        topics, qrels = flat / "topics.tsv", flat / "qrels.tsv"
        corpus = [p for p in _corpus_files(flat) if p.name.startswith("corpus")] or _corpus_files(flat / "corpus")
        corpus_hint = f"{flat}/corpus.jsonl[.gz] or {flat}/corpus/*.jsonl[.gz]"
    for path in (topics, qrels):
        if not path.is_file():
            raise MiraclFormatError(
                f"{path} not found. Expected the official layout (miracl-v1.0-{lang}/topics|qrels/..., "
                f"miracl-corpus-v1.0-{lang}/docs-*.jsonl.gz) or the flat one ({lang}/topics.tsv, {lang}/qrels.tsv, "
                f"{lang}/corpus.jsonl) under {data_dir}"
            )
    if not corpus:
        raise MiraclFormatError(f"no corpus file for {lang}: expected {corpus_hint}")
    return topics, qrels, corpus


def load_miracl_language(
    lang: str,
    data_dir: str | os.PathLike | None = None,
    *,
    split: str = "dev",
    source: str = "local",
    cache_dir: str | os.PathLike | None = None,
) -> MiraclLanguage:
    """One language's topics, qrels and corpus, from `data_dir` (`source="local"`) or the hub (`"hf"`)."""
    if source == "local":
        if data_dir is None:
            raise MiraclFormatError("MIRACL: benchmark.data_dir is required with source=local (or use source=hf)")
        root = Path(data_dir).expanduser()
        topics_path, qrels_path, corpus_files = _local_files(lang, root, split)
        return MiraclLanguage(
            lang,
            read_topics(topics_path),
            read_qrels(qrels_path),
            lambda: iter_jsonl_corpus(corpus_files),
            f"local:{','.join(str(p) for p in corpus_files)}",
        )
    if source == "hf":
        return _load_from_hub(lang, split, cache_dir)
    raise ValueError(f"MIRACL source={source!r}: expected 'local' or 'hf'")


def _load_from_hub(lang: str, split: str, cache_dir: str | os.PathLike | None) -> MiraclLanguage:
    if importlib.util.find_spec("datasets") is None:
        raise ImportError("MIRACL from the Hugging Face hub streams the corpus with `datasets`: pip install 'hybatch[miracl]'")
    from huggingface_hub import hf_hub_download

    def fetch(kind: str) -> Path:
        name = f"miracl-v1.0-{lang}/{kind}/{kind}.miracl-v1.0-{lang}-{split}.tsv"
        try:
            return Path(hf_hub_download(HF_TOPICS_REPO, name, repo_type="dataset", cache_dir=cache_dir))
        except Exception as err:  # noqa: BLE001 - offline, unknown language or split: say which file
            raise MiraclFormatError(
                f"could not get {name} from the dataset {HF_TOPICS_REPO} ({err}); it may need its terms accepted on "
                "the hub and `huggingface-cli login`, or use source=local with the files in data_dir"
            ) from err

    topics, qrels = read_topics(fetch("topics")), read_qrels(fetch("qrels"))
    pattern = f"hf://datasets/{HF_CORPUS_REPO}/miracl-corpus-v1.0-{lang}/docs-*.jsonl.gz"

    def corpus() -> Iterator[Document]:
        import datasets

        stream = datasets.load_dataset("json", data_files=pattern, split="train", streaming=True)
        for n, row in enumerate(stream):
            yield _document(row, f"{pattern} record {n}")

    return MiraclLanguage(lang, topics, qrels, corpus, f"hf:{pattern}")


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
