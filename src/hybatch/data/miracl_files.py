"""MIRACL (Zhang et al. 2023) data: each language's topics, qrels and Wikipedia corpus.

Sources:
- a local directory in the official layout (`miracl-v1.0-<lang>/topics/topics.miracl-v1.0-<lang>-<split>.tsv`,
  `miracl-v1.0-<lang>/qrels/qrels.miracl-v1.0-<lang>-<split>.tsv`, `miracl-corpus-v1.0-<lang>/docs-*.jsonl[.gz]`),
  or a flat one (`<lang>/topics.tsv`, `<lang>/qrels.tsv`, `<lang>/corpus*.jsonl[.gz]` or `<lang>/corpus/*.jsonl[.gz]`);
- the Hugging Face hub (`source="hf"`): topics and qrels downloaded from `miracl/miracl`, the corpus
  streamed from `miracl/miracl-corpus` with `datasets` (optional: `pip install hybatch[miracl]`).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybatch.data.beir_folder import Document

MIRACL_LANGUAGES = ("ar", "bn", "de", "en", "es", "fa", "fi", "fr", "hi", "id", "ja", "ko", "ru", "sw", "te", "th", "yo", "zh")
# Hub datasets pinned to a commit, so a run reads the same topics, qrels and corpus whenever it runs.
HF_TOPICS_REPO = "miracl/miracl"
HF_TOPICS_REVISION = "5be20db9509754dadad47689368639fcec739c00"
HF_CORPUS_REPO = "miracl/miracl-corpus"
HF_CORPUS_REVISION = "d921ec7e349ce0d28daf30b2da9da5ee698bef0d"


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
            path = hf_hub_download(HF_TOPICS_REPO, name, repo_type="dataset", revision=HF_TOPICS_REVISION, cache_dir=cache_dir)
            return Path(path)
        except Exception as err:  # noqa: BLE001 - offline, unknown language or split: say which file
            raise MiraclFormatError(
                f"could not get {name} from the dataset {HF_TOPICS_REPO}@{HF_TOPICS_REVISION} ({err}); it may need its terms accepted on "
                "the hub and `huggingface-cli login`, or use source=local with the files in data_dir"
            ) from err

    topics, qrels = read_topics(fetch("topics")), read_qrels(fetch("qrels"))
    pattern = f"hf://datasets/{HF_CORPUS_REPO}@{HF_CORPUS_REVISION}/miracl-corpus-v1.0-{lang}/docs-*.jsonl.gz"

    def corpus() -> Iterator[Document]:
        import datasets

        stream = datasets.load_dataset("json", data_files=pattern, split="train", streaming=True)
        for n, row in enumerate(stream):
            yield _document(row, f"{pattern} record {n}")

    return MiraclLanguage(lang, topics, qrels, corpus, f"hf:{pattern}")
