"""Keep evaluation data out of training: ids and article titles of the benchmarks' test data.

A training example is contaminated when its id is a question id of an evaluation benchmark, or
its article (source document) is one of the benchmark's articles: machine-translated QA sets are
often built from the same Wikipedia articles or SQuAD questions as XQuAD-R / MLQA-R. The run's
own held-out splits count too: training examples must not share an (dataset, id) or an article
with the validation or test split, nor validation examples with the test split.

A benchmark the guard cannot obtain (offline, not in the cache, no directory given) is by default
skipped with a warning and recorded in `BenchmarkHygiene.report()`: a research run on a machine
without internet should not stop for a check the user can make happen by giving the directory.
A directory that is given but wrong is a typo, and stays an error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from hybatch.data.corpus import ParallelCorpus, ParallelExample
from hybatch.data.lareqa_benchmarks import SOURCES, lareqa_files, load_lareqa_language
from hybatch.data.training_data import TrainingData
from hybatch.downloads import ChecksumError, DataSourceError

log = logging.getLogger(__name__)

ON_OVERLAP = ("raise", "drop")
ON_UNAVAILABLE = ("warn", "raise")


class ContaminationError(ValueError):
    """Training data contains examples of the evaluation data."""


class BenchmarkUnavailable(DataSourceError):
    """A benchmark's files are neither given, nor in the cache, nor downloadable."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(reason)
        self.name = name
        self.reason = reason


def normalise_title(title: str) -> str:
    """`Super_Bowl_50` and `super bowl 50` are the same article."""
    return " ".join(title.replace("_", " ").split()).casefold()


@dataclass(frozen=True)
class HeldOut:
    """What must not appear in training: ids (optionally per dataset) and article titles."""

    name: str
    ids: frozenset[str] = frozenset()
    dataset_ids: frozenset[tuple[str, str]] = frozenset()
    articles: frozenset[str] = frozenset()

    @classmethod
    def from_corpus(cls, name: str, corpus: ParallelCorpus) -> HeldOut:
        """A split of the run's own data: ids count within their dataset only."""
        return cls(
            name,
            dataset_ids=frozenset((ex.dataset, ex.id) for ex in corpus.examples),
            articles=frozenset(normalise_title(ex.article) for ex in corpus.examples if ex.article),
        )

    def reason(self, example: ParallelExample) -> str | None:
        """Why `example` overlaps this held-out set, or None."""
        if example.id in self.ids or (example.dataset, example.id) in self.dataset_ids:
            return f"id {example.id!r} is in the {self.name} data"
        if example.article and normalise_title(example.article) in self.articles:
            return f"article {example.article!r} is an article of the {self.name} data"
        return None


def lareqa_held_out(
    name: str,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    config_key: str = "data.hygiene",
) -> HeldOut:
    """Question ids and article titles of every language file of a LAReQA benchmark (xquad_r, mlqa_r).

    Raises `BenchmarkUnavailable` when the files must come from the cache or a download and cannot
    (a checksum mismatch, or a given `data_dir` that lacks them, raise `DataSourceError` as before).
    """
    if name not in SOURCES:
        raise ContaminationError(f"{config_key}.benchmarks has {name!r}; known benchmarks: {sorted(SOURCES)}")
    try:
        files = lareqa_files(name, data_dir=data_dir, cache_dir=cache_dir, data_dir_key=f"{config_key}.benchmarks.{name}")
    except DataSourceError as err:
        hint = (
            f"The training data are checked against {name}'s test data: set {config_key}.benchmarks.{name}=<its "
            f"directory>, or leave {name} out of {config_key}.benchmarks"
        )
        if data_dir is None and not isinstance(err, ChecksumError):
            raise BenchmarkUnavailable(name, f"{err}. {hint}") from err
        raise DataSourceError(f"{err}. {hint}") from err
    ids: set[str] = set()
    articles: set[str] = set()
    for lang, path in files.items():
        part = load_lareqa_language(path, lang)
        ids.update(q.qid for q in part.questions)
        articles.update(normalise_title(q.article) for q in part.questions)
    return HeldOut(name, ids=frozenset(ids), articles=frozenset(articles))


def filter_corpus(
    corpus: ParallelCorpus, held_out: Iterable[HeldOut], split: str, on_overlap: str, config_key: str = "data.hygiene"
) -> ParallelCorpus:
    """The examples of `corpus` that overlap none of `held_out`; overlaps raise, or are dropped with a logged count."""
    held_out = list(held_out)
    kept: list[ParallelExample] = []
    found: list[str] = []
    for ex in corpus.examples:
        reason = next((r for h in held_out if (r := h.reason(ex)) is not None), None)
        if reason is None:
            kept.append(ex)
        else:
            found.append(f"{ex.origin or f'{split} dataset {ex.dataset!r}'}: example {ex.id!r}: {reason}")
    if not found:
        return corpus
    if on_overlap == "raise":
        shown = "\n  ".join(found[:5])
        more = f"\n  ... and {len(found) - 5} more" if len(found) > 5 else ""
        raise ContaminationError(
            f"{len(found)} of {len(corpus)} {split} examples appear in evaluation data:\n  {shown}{more}\n"
            f"Remove them from the data, or set {config_key}.on_overlap=drop to leave them out"
        )
    log.warning("data hygiene: dropped %d of %d %s examples found in evaluation data (e.g. %s)", len(found), len(corpus), split, found[0])
    return ParallelCorpus(kept)


class BenchmarkHygiene:
    """Refuses (`on_overlap="raise"`) or drops (`"drop"`) training / validation examples found in test data.

    `benchmarks` maps a LAReQA benchmark name to the directory of its files (None: the cache,
    downloaded once); the run's own validation and test splits are always checked. A benchmark that
    cannot be obtained is skipped with a warning (`on_unavailable="warn"`) or stops the run
    (`"raise"`); `report()` says which benchmarks were checked and which were not, and why.
    `config_key` is where these settings live in the run's config, for the messages.
    """

    def __init__(
        self,
        benchmarks: Mapping[str, str | os.PathLike | None] | None = None,
        cache_dir: str | os.PathLike | None = None,
        on_overlap: str = "raise",
        on_unavailable: str = "warn",
        config_key: str = "data.hygiene",
    ) -> None:
        if on_overlap not in ON_OVERLAP:
            raise ValueError(f"{config_key}.on_overlap={on_overlap!r}: expected one of {ON_OVERLAP}")
        if on_unavailable not in ON_UNAVAILABLE:
            raise ValueError(f"{config_key}.on_unavailable={on_unavailable!r}: expected one of {ON_UNAVAILABLE}")
        self.benchmarks = dict(benchmarks or {})
        self.cache_dir = cache_dir
        self.on_overlap = on_overlap
        self.on_unavailable = on_unavailable
        self.config_key = config_key
        self.checked: dict[str, dict[str, int]] = {}
        self.unavailable: dict[str, str] = {}

    def report(self) -> dict[str, Any]:
        """What the last call checked: `checked` (benchmark -> its question and article counts) and
        `unavailable` (benchmark -> why it could not be obtained)."""
        return {"checked": dict(self.checked), "unavailable": dict(self.unavailable), "on_unavailable": self.on_unavailable}

    def _external(self) -> list[HeldOut]:
        held: list[HeldOut] = []
        self.checked, self.unavailable = {}, {}
        for name, data_dir in sorted(self.benchmarks.items()):
            try:
                h = lareqa_held_out(name, data_dir, self.cache_dir, self.config_key)
            except BenchmarkUnavailable as err:
                if self.on_unavailable == "raise":
                    raise
                self.unavailable[name] = err.reason
                log.warning(
                    "data hygiene: %s is unavailable, so the data are NOT checked against it: %s. To check, set "
                    "%s.benchmarks.%s=<directory of its files> (%s.on_unavailable=raise makes this an error)",
                    name, err.reason, self.config_key, name, self.config_key,
                )  # fmt: skip
                continue
            self.checked[name] = {"questions": len(h.ids), "articles": len(h.articles)}
            held.append(h)
        return held

    def __call__(self, data: TrainingData) -> TrainingData:
        external = self._external()
        test = [HeldOut.from_corpus("test split", data.test)] if data.test is not None else []
        val = [HeldOut.from_corpus("validation split", data.val)] if data.val is not None else []
        train = filter_corpus(data.train, [*external, *test, *val], "train", self.on_overlap, self.config_key)
        held_val = filter_corpus(data.val, [*external, *test], "val", self.on_overlap, self.config_key) if data.val is not None else None
        if self.checked:
            log.info("data hygiene: checked against %s", self.checked)
        return replace(data, train=train, val=held_val)
