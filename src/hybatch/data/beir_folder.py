"""Folders in the BEIR layout (Thakur et al. 2021), and the corpus / query files `hybatch-search` reads.

    <data_dir>/corpus.jsonl       {"_id": ..., "title": ..., "text": ...} per line (title optional)
    <data_dir>/queries.jsonl      {"_id": ..., "text": ...} per line
    <data_dir>/qrels/<split>.tsv  a header `query-id<TAB>corpus-id<TAB>score`, then one judgment per line

Corpus and query files may also be TSV (`.tsv`): `id<TAB>text` per line, no header. Ids are strings
(BEIR's JSON sometimes has numbers: they are read as their decimal text) without whitespace, since
they go into TREC run files. Every error names the file and line.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

Document = tuple[str, str, str]  # docid, title, text
QRELS_HEADER = ("query-id", "corpus-id", "score")


class BeirFormatError(ValueError):
    """A BEIR-layout file is missing or malformed."""


@dataclass
class BeirData:
    """Queries and qrels of one split, and a re-iterable view of the corpus."""

    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    corpus: Callable[[], Iterator[Document]]
    source: str  # the corpus file, size included: part of the embedding cache's fingerprint


def _open(path: Path) -> IO[str]:
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _is_tsv(path: Path) -> bool:
    return path.name.removesuffix(".gz").endswith(".tsv")


def _check_id(value: object, where: str, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BeirFormatError(f"{where}: {what} must be a string (or an integer), got {value!r}")
    text = str(value)
    if not text or re.search(r"\s", text):
        raise BeirFormatError(f"{where}: {what} {text!r} is empty or holds whitespace (it cannot go into a TREC run file)")
    return text


def _records(path: Path, kind: str) -> Iterator[tuple[str, Document]]:
    """(where, (id, title, text)) per non-blank line of a JSONL or TSV file."""
    with _open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            where = f"{path}:{n}"
            if _is_tsv(path):
                parts = line.split("\t")
                if len(parts) != 2:
                    raise BeirFormatError(f"{where}: expected 'id<TAB>text' ({len(parts)} tab-separated fields), got {line[:80]!r}")
                yield where, (_check_id(parts[0], where, f"{kind} id"), "", parts[1])
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise BeirFormatError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from err
            if not isinstance(obj, dict) or "_id" not in obj or not isinstance(obj.get("text"), str):
                raise BeirFormatError(f"{where}: expected an object with '_id' and a string 'text', got {line[:80]!r}")
            title = obj.get("title") or ""
            if not isinstance(title, str):
                raise BeirFormatError(f"{where}: 'title' must be a string, got {title!r}")
            yield where, (_check_id(obj["_id"], where, f"{kind} '_id'"), title, obj["text"])


def iter_corpus(path: str | os.PathLike) -> Iterator[Document]:
    """The documents of a corpus file, in file order."""
    for _, doc in _records(Path(path), "document"):
        yield doc


def read_queries(path: str | os.PathLike) -> dict[str, str]:
    """`{query id: text}` of a queries file (JSONL with `_id`, `text`; or TSV)."""
    queries: dict[str, str] = {}
    for where, (qid, _, text) in _records(Path(path), "query"):
        if qid in queries:
            raise BeirFormatError(f"{where}: query id {qid!r} appears twice")
        queries[qid] = text
    return queries


def read_qrels(path: str | os.PathLike, queries: dict[str, str] | None = None) -> dict[str, dict[str, int]]:
    """`{query id: {doc id: grade}}` of a BEIR qrels TSV; with `queries`, every judged query must be one."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    with _open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            parts = line.split("\t")
            if n == 1:
                if tuple(p.strip() for p in parts) != QRELS_HEADER:
                    raise BeirFormatError(f"{path}:1: expected the header '{chr(9).join(QRELS_HEADER)}', got {line[:80]!r}")
                continue
            if not line.strip():
                continue
            where = f"{path}:{n}"
            if len(parts) != 3 or not re.fullmatch(r"-?\d+", parts[2].strip()):
                raise BeirFormatError(f"{where}: expected 'query-id<TAB>corpus-id<TAB>score(int)', got {line[:80]!r}")
            qid, docid = _check_id(parts[0], where, "query-id"), _check_id(parts[1], where, "corpus-id")
            if queries is not None and qid not in queries:
                raise BeirFormatError(f"{where}: query-id {qid!r} is not in the queries file")
            judged = qrels.setdefault(qid, {})
            if docid in judged:
                raise BeirFormatError(f"{where}: ({qid!r}, {docid!r}) is judged twice")
            judged[docid] = int(parts[2])
    if not qrels:
        raise BeirFormatError(f"{path}: no judgments after the header")
    return qrels


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in (".jsonl", ".jsonl.gz"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def load_beir_folder(data_dir: str | os.PathLike, split: str = "test") -> BeirData:
    """A BEIR folder's queries judged in `split`, their qrels and its corpus (read lazily, when encoded)."""
    root = Path(data_dir).expanduser()
    layout = "corpus.jsonl, queries.jsonl and qrels/<split>.tsv"
    if not root.is_dir():
        raise BeirFormatError(f"BEIR data_dir {root} is not a directory (expected {layout} in it)")
    corpus, queries_path, qrels_path = _find(root, "corpus"), _find(root, "queries"), root / "qrels" / f"{split}.tsv"
    for name, path in (("corpus.jsonl", corpus), ("queries.jsonl", queries_path)):
        if path is None:
            raise BeirFormatError(f"{root / name} not found: a BEIR folder holds {layout}")
    if not qrels_path.is_file():
        splits = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
        raise BeirFormatError(f"{qrels_path} not found (split={split!r}; the folder has qrels for {splits or 'no split'})")
    all_queries = read_queries(queries_path)
    qrels = read_qrels(qrels_path, all_queries)
    # As BEIR's loader: only the queries judged in this split are searched and scored.
    queries = {qid: all_queries[qid] for qid in qrels}
    stat = corpus.stat()  # size and modification time: an edited corpus is encoded again
    return BeirData(queries, qrels, lambda: iter_corpus(corpus), f"{corpus.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
