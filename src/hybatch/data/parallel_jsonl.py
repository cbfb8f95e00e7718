"""Parallel JSONL: the paper's setting of QA datasets machine-translated into many languages.

One line per example id::

    {"id": "nq-00017", "dataset": "nq", "article": "optional source title",
     "translations": {"en": {"query": "...", "positive": "...", "negatives": ["...", ...]},
                      "de": {"query": "...", "positive": "..."}}}

`dataset` defaults to the file's name without extension; `negatives` and `article` are optional.
An optional `"passage_id"` names the positive passage: examples with the same one (or the same
normalised positive text in any language) are never each other's negatives.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from hybatch.data.corpus import ParallelCorpus, ParallelExample, Translation
from hybatch.data.training_data import TrainingData
from hybatch.downloads import resolve_files


class JsonlFormatError(ValueError):
    """A line of a parallel JSONL file is not what the schema expects."""


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise JsonlFormatError(f"{where}: expected a non-empty string, got {value!r:.60}")
    return value


def parse_example(record: object, where: str, default_dataset: str) -> ParallelExample:
    """Validate one decoded line; `where` ("file:line") prefixes every error."""
    if not isinstance(record, dict):
        raise JsonlFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "id" not in record:
        raise JsonlFormatError(f"{where}: missing key 'id'")
    if not isinstance(record["id"], (str, int)):
        raise JsonlFormatError(f"{where}: 'id' must be a string or integer")
    translations = record.get("translations")
    if not isinstance(translations, dict) or not translations:
        raise JsonlFormatError(f"{where}: missing key 'translations' (an object: language code -> {{query, positive, negatives}})")
    parsed = {}
    for lang, t in translations.items():
        at = f"{where}: translations.{lang}"
        if not isinstance(t, dict):
            raise JsonlFormatError(f"{at}: expected an object with 'query' and 'positive'")
        for key in ("query", "positive"):
            if key not in t:
                raise JsonlFormatError(f"{at}: missing key {key!r}")
        negatives = t.get("negatives", [])
        if not isinstance(negatives, list):
            raise JsonlFormatError(f"{at}.negatives: expected a list of strings")
        parsed[lang] = Translation(
            _text(t["query"], f"{at}.query"),
            _text(t["positive"], f"{at}.positive"),
            tuple(_text(n, f"{at}.negatives[{k}]") for k, n in enumerate(negatives)),
        )
    dataset = record.get("dataset", default_dataset)
    if not isinstance(dataset, str) or not dataset:
        raise JsonlFormatError(f"{where}: 'dataset' must be a non-empty string")
    article = record.get("article")
    if article is not None and not isinstance(article, str):
        raise JsonlFormatError(f"{where}: 'article' must be a string")
    passage_id = record.get("passage_id")
    if passage_id is not None and not isinstance(passage_id, (str, int)):
        raise JsonlFormatError(f"{where}: 'passage_id' must be a string or integer")
    passage_ids = () if passage_id is None else (str(passage_id),)
    return ParallelExample(str(record["id"]), dataset, parsed, article, origin=where, passage_ids=passage_ids)


def read_parallel_jsonl(paths: Iterable[str | os.PathLike]) -> ParallelCorpus:
    """Read and validate every line of every file before returning anything."""
    examples: list[ParallelExample] = []
    seen: dict[tuple[str, str], str] = {}
    for path in paths:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"parallel JSONL file {path} does not exist")
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                where = f"{path}:{lineno}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise JsonlFormatError(f"{where}: not valid UTF-8 (byte {err.start} of the line); expected UTF-8 text") from err
                if not line.strip():
                    continue
                try:
                    record = json.loads(line.rstrip("\r\n"))  # columns of an unfinished line point into it
                except json.JSONDecodeError as err:
                    raise JsonlFormatError(f"{where}: invalid JSON at column {err.colno}: {err.msg}") from err
                example = parse_example(record, where, path.name.split(".")[0])
                key = (example.dataset, example.id)
                if key in seen:
                    raise JsonlFormatError(f"{where}: id {example.id!r} of dataset {example.dataset!r} already at {seen[key]}")
                seen[key] = where
                examples.append(example)
    if not examples:
        raise JsonlFormatError(f"no examples in {[str(p) for p in paths]}")
    return ParallelCorpus(examples)


def load_parallel_jsonl(
    train: str | os.PathLike | Sequence[str | os.PathLike],
    val: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    test: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> TrainingData:
    """Train / val / test files: paths (relative ones under `data_dir`) or URLs downloaded once into the cache."""
    if not train:
        raise JsonlFormatError("data.source.train: expected at least one JSONL file")

    def local(location: str | os.PathLike) -> Path:
        location = str(location)
        if location.startswith(("http://", "https://")):
            base, name = location.rstrip("/").rsplit("/", 1)
            # One cache folder per URL: files of the same name from different places never collide.
            folder = f"parallel-jsonl/{hashlib.sha256(location.encode()).hexdigest()[:16]}"
            template = base.replace("{", "{{").replace("}", "}}") + "/{name}"
            return resolve_files([name], None, template, cache_dir, folder)[name]
        path = Path(location).expanduser()
        return path if path.is_absolute() or data_dir is None else Path(data_dir).expanduser() / path

    def as_list(files: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[str | os.PathLike]:
        # A single file given as a string, not a string's characters.
        return [files] if isinstance(files, (str, os.PathLike)) else list(files or [])

    corpora = {
        split: read_parallel_jsonl([local(f) for f in as_list(files)]) if files else None
        for split, files in (("train", train), ("val", val), ("test", test))
    }
    return TrainingData(corpora["train"], corpora["val"], corpora["test"])
