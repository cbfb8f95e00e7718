"""Training-data sources normalised to (id, query, positive, hard negatives), with counts of what is dropped.

A source reads rows (a local JSONL / CSV / Parquet file, or a Hugging Face dataset at a pinned
revision), maps its fields to ours with a field mapping (dotted paths into nested rows, list
indices as numbers: ``answers.text.0``), keeps the rows matching `where`, and normalises: white
space collapsed; empty, over-long and duplicate (same query and positive) pairs dropped and
counted. Examples are `ParallelExample`s in the source language; `ParallelHubSource` (mMARCO)
reads several languages joined by id, already translated.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hybatch.data.corpus import ParallelExample, Translation

log = logging.getLogger(__name__)

FIELDS = ("id", "query", "positive", "negatives", "article")


class SourceError(ValueError):
    """A source's file, row or configuration is not what was expected."""


def lookup(row: Any, path: str, where: str) -> Any:
    """`row["a"]["b"][0]` for the path ``a.b.0``; ``a.*.text`` maps the rest of the path over a list.
    None when a key is missing or a list too short."""
    value = row
    parts = path.split(".")
    for k, part in enumerate(parts):
        if part == "*":
            if not isinstance(value, Sequence) or isinstance(value, str):
                return None
            rest = ".".join(parts[k + 1 :])
            return [lookup(item, rest, where) if rest else item for item in value]
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, Sequence) and not isinstance(value, str) and part.lstrip("-").isdigit():
            index = int(part)
            value = value[index] if -len(value) <= index < len(value) else None
        elif value is None:
            return None
        else:
            raise SourceError(f"{where}: field path {path!r}: {part!r} cannot index a {type(value).__name__}")
    return value


def clean(text: Any) -> str:
    """A string with its white space collapsed; None and non-strings become ''."""
    return " ".join(text.split()) if isinstance(text, str) else ""


class Normaliser:
    """Turns mapped records into examples; counts every dropped pair by reason.

    A pair is over-long when its query has more than `max_query_chars` characters or its positive
    more than `max_passage_chars`; negatives over that length (or empty, or equal to the positive)
    are left out of the example and counted too.
    """

    def __init__(self, name: str, max_query_chars: int = 1000, max_passage_chars: int = 10000, max_negatives: int = 8) -> None:
        self.name = name
        self.max_query_chars = max_query_chars
        self.max_passage_chars = max_passage_chars
        self.max_negatives = max_negatives
        self.counts: Counter[str] = Counter()
        self._pairs: set[tuple[str, str, str]] = set()
        self._ids: Counter[str] = Counter()

    def translation(self, lang: str, query: Any, positive: Any, negatives: Any) -> Translation | None:
        q, p = clean(query), clean(positive)
        if not q or not p:
            self.counts["empty"] += 1
            return None
        if len(q) > self.max_query_chars or len(p) > self.max_passage_chars:
            self.counts["too_long"] += 1
            return None
        if (lang, q, p) in self._pairs:
            self.counts["duplicate"] += 1
            return None
        self._pairs.add((lang, q, p))
        if isinstance(negatives, str):
            negatives = [negatives]
        kept: list[str] = []
        for n in map(clean, negatives or []):
            if not n or n == p or len(n) > self.max_passage_chars or n in kept:
                self.counts["negatives_dropped"] += 1
            elif len(kept) < self.max_negatives:
                kept.append(n)
        return Translation(q, p, tuple(kept))

    def example(self, raw_id: Any, translations: Mapping[str, Translation], article: Any, fallback_id: str) -> ParallelExample:
        """An example with a unique id: a repeated id (several positives of one question) gets a `-<k>` suffix."""
        base = str(raw_id) if raw_id is not None and str(raw_id).strip() else fallback_id
        self._ids[base] += 1
        ex_id = base if self._ids[base] == 1 else f"{base}-{self._ids[base]}"
        if ex_id != base:
            self.counts["ids_suffixed"] += 1
        return ParallelExample(ex_id, self.name, dict(translations), clean(article) or None)


class Source(ABC):
    """Rows of one dataset mapped to our fields; subclasses say where the rows come from."""

    def __init__(
        self,
        name: str,
        fields: Mapping[str, str | None],
        language: str = "en",
        where: Mapping[str, Any] | None = None,
        license: str | None = None,
        max_query_chars: int = 1000,
        max_passage_chars: int = 10000,
        max_negatives: int = 8,
    ) -> None:
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise SourceError(f"dataset.fields has {sorted(unknown)}; known fields: {list(FIELDS)}")
        for required in ("query", "positive"):
            if not fields.get(required):
                raise SourceError(f"dataset.fields.{required}: expected the name (or dotted path) of the row's {required} field")
        self.name = name
        self.fields = {k: v for k, v in fields.items() if v}
        self.language = language
        self.where = dict(where or {})
        self.license = license
        self.limits = {"max_query_chars": max_query_chars, "max_passage_chars": max_passage_chars, "max_negatives": max_negatives}

    @abstractmethod
    def rows(self, streaming: bool = False) -> Iterator[tuple[str, Any]]:
        """(location for error messages, row) pairs; `streaming`: read only as far as they are consumed
        (a hub dataset is then not downloaded whole)."""

    def describe(self) -> dict[str, Any]:
        """Where the data came from, for the dataset card."""
        return {"name": self.name, "kind": type(self).__name__, "language": self.language, "license": self.license,
                "fields": self.fields, "where": self.where}  # fmt: skip

    def selected(self, row: Any, where: str) -> bool:
        return all(lookup(row, key, where) == value for key, value in self.where.items())

    def examples(self, limit: int | None = None) -> tuple[list[ParallelExample], Counter[str]]:
        """The normalised examples and the counts: rows read, not selected by `where`, dropped by reason.
        With `limit`, reading stops at the `limit`-th example (the counts are of the rows read)."""
        norm = Normaliser(self.name, **self.limits)
        examples: list[ParallelExample] = []
        for index, (where, row) in enumerate(self.rows(streaming=limit is not None)):
            if limit is not None and len(examples) >= limit:
                break
            norm.counts["rows"] += 1
            if not self.selected(row, where):
                norm.counts["not_selected"] += 1
                continue
            get = {f: (lookup(row, path, where) if path else None) for f, path in self.fields.items()}
            t = norm.translation(self.language, get.get("query"), get.get("positive"), get.get("negatives"))
            if t is not None:
                examples.append(norm.example(get.get("id"), {self.language: t}, get.get("article"), f"{self.name}-{index}"))
        norm.counts["examples"] = len(examples)
        return examples, norm.counts


class FileSource(Source):
    """A local JSONL, CSV (header row) or Parquet file; the format comes from the suffix unless given."""

    def __init__(self, path: str | os.PathLike, format: str | None = None, name: str | None = None, **kwargs: Any) -> None:
        self.path = Path(path).expanduser()
        self.format = format or self.path.suffix.lstrip(".").lower()
        if self.format not in ("jsonl", "csv", "parquet"):
            raise SourceError(f"source.format={self.format!r} (from {self.path}): expected jsonl, csv or parquet")
        super().__init__(name=name or self.path.name.split(".")[0], **kwargs)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": str(self.path.resolve()), "format": self.format}

    def rows(self, streaming: bool = False) -> Iterator[tuple[str, Any]]:
        if not self.path.is_file():
            raise SourceError(f"dataset.path: {self.path} does not exist")
        if self.format == "jsonl":
            with self.path.open("rb") as f:
                for lineno, raw in enumerate(f, start=1):
                    where = f"{self.path}:{lineno}"
                    try:
                        line = raw.decode("utf-8")
                        if line.strip():
                            yield where, json.loads(line)
                    except UnicodeDecodeError as err:
                        raise SourceError(f"{where}: not valid UTF-8 (byte {err.start}); expected UTF-8 JSON lines") from err
                    except json.JSONDecodeError as err:
                        raise SourceError(f"{where}: invalid JSON at column {err.colno}: {err.msg}") from err
        elif self.format == "csv":
            with self.path.open(newline="", encoding="utf-8") as f:
                for lineno, row in enumerate(csv.DictReader(f), start=2):
                    yield f"{self.path}:{lineno}", row
        else:
            try:
                import pyarrow.parquet as pq
            except ImportError as err:
                raise SourceError("reading Parquet needs pyarrow: pip install 'hybatch[prepare]'") from err
            for index, row in enumerate(pq.read_table(self.path).to_pylist()):
                yield f"{self.path}:row {index}", row


def load_hub_dataset(dataset: str, revision: str | None, split: str, config: str | None = None, **kwargs: Any) -> Any:
    """`datasets.load_dataset` at a pinned revision (imported lazily: an optional extra)."""
    try:
        import datasets
    except ImportError as err:
        raise SourceError("Hugging Face sources need the datasets package: pip install 'hybatch[prepare]'") from err
    return datasets.load_dataset(dataset, config, split=split, revision=revision, **kwargs)


class HubSource(Source):
    """A Hugging Face hub dataset at a pinned `revision` (a commit sha; `main` is unpinned)."""

    def __init__(self, dataset: str, revision: str | None, split: str, config: str | None = None,
                 data_files: Any = None, name: str | None = None, **kwargs: Any) -> None:  # fmt: skip
        self.dataset = dataset
        self.revision = revision
        self.split = split
        self.config = config
        self.data_files = data_files
        super().__init__(name=name or dataset.rsplit("/", 1)[-1], **kwargs)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "dataset": self.dataset, "revision": self.revision, "split": self.split,
                "config": self.config, "data_files": self.data_files}  # fmt: skip

    def rows(self, streaming: bool = False) -> Iterator[tuple[str, Any]]:
        extra = {"data_files": self.data_files} if self.data_files else {}
        data = load_hub_dataset(self.dataset, self.revision, self.split, self.config, streaming=streaming, **extra)
        for index, row in enumerate(data):
            yield f"{self.dataset}@{self.revision}[{self.split}] row {index}", row


class ParallelHubSource(HubSource):
    """A dataset already in several languages (mMARCO): one hub config (or data files) per language,
    rows joined by the `id` field, or by row index when the mapping has no id (files that are
    line-by-line translations of each other). No machine translation is needed; an id missing in a
    language just lacks that language."""

    def __init__(self, languages: Mapping[str, Any], **kwargs: Any) -> None:
        kwargs.setdefault("config", None)
        super().__init__(**kwargs)
        self.languages = dict(languages)  # our code -> hub config name, or {config: ..., data_files: ...}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "languages": self.languages}

    def language_rows(self, spec: Any, streaming: bool = False) -> Iterator[tuple[str, Any]]:
        spec = spec if isinstance(spec, Mapping) else {"config": spec}
        data = load_hub_dataset(self.dataset, self.revision, self.split, spec.get("config"), streaming=streaming,
                                **({"data_files": spec["data_files"]} if spec.get("data_files") else {}))  # fmt: skip
        for index, row in enumerate(data):
            yield f"{self.dataset}@{self.revision}[{spec}] row {index}", row

    def examples(self, limit: int | None = None) -> tuple[list[ParallelExample], Counter[str]]:
        """With `limit`, each language is read up to its `limit`-th row: exact for rows joined by index,
        and the first `limit` joined examples are kept."""
        norm = Normaliser(self.name, **self.limits)
        by_id: dict[str, dict[str, Translation]] = {}
        articles: dict[str, Any] = {}
        for lang, spec in self.languages.items():
            for index, (where, row) in enumerate(self.language_rows(spec, streaming=limit is not None)):
                if limit is not None and index >= limit:
                    break
                norm.counts["rows"] += 1
                if not self.selected(row, where):
                    norm.counts["not_selected"] += 1
                    continue
                get = {f: lookup(row, path, where) for f, path in self.fields.items()}
                t = norm.translation(lang, get.get("query"), get.get("positive"), get.get("negatives"))
                if t is not None:
                    key = str(get["id"]) if "id" in self.fields else f"{self.name}-{index}"
                    by_id.setdefault(key, {})[lang] = t
                    articles.setdefault(key, get.get("article"))
        examples = [norm.example(i, ts, articles[i], i) for i, ts in by_id.items()][:limit]
        norm.counts["examples"] = len(examples)
        return examples, norm.counts
