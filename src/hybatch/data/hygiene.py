"""Keep evaluation data out of training: ids and article titles of the benchmarks' test data.

A training example is contaminated when its id is a question id of an evaluation benchmark, or
its article (source document) is one of the benchmark's articles: machine-translated QA sets are
often built from the same Wikipedia articles or SQuAD questions as XQuAD-R / MLQA-R. The run's
own held-out splits count too: training examples must not share an (dataset, id) or an article
with the validation or test split, nor validation examples with the test split.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from hybatch.data.corpus import ParallelCorpus, ParallelExample
from hybatch.data.lareqa import SOURCES, lareqa_files, load_lareqa_language
from hybatch.data.sources import DataSourceError
from hybatch.data.training_data import TrainingData

log = logging.getLogger(__name__)

ON_OVERLAP = ("raise", "drop")


class ContaminationError(ValueError):
    """Training data contains examples of the evaluation data."""


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


def lareqa_held_out(name: str, data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> HeldOut:
    """Question ids and article titles of every language file of a LAReQA benchmark (xquad_r, mlqa_r)."""
    if name not in SOURCES:
        raise ContaminationError(f"data.hygiene.benchmarks has {name!r}; known benchmarks: {sorted(SOURCES)}")
    try:
        files = lareqa_files(name, data_dir=data_dir, cache_dir=cache_dir)
    except DataSourceError as err:
        raise DataSourceError(
            f"{err}. The training data are checked against {name}'s test data: set data.hygiene.benchmarks.{name}=<its "
            f"directory>, or leave {name} out of data.hygiene.benchmarks"
        ) from err
    ids: set[str] = set()
    articles: set[str] = set()
    for lang, path in files.items():
        part = load_lareqa_language(path, lang)
        ids.update(q.qid for q in part.questions)
        articles.update(normalise_title(q.article) for q in part.questions)
    return HeldOut(name, ids=frozenset(ids), articles=frozenset(articles))


def filter_corpus(corpus: ParallelCorpus, held_out: Iterable[HeldOut], split: str, on_overlap: str) -> ParallelCorpus:
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
            "Remove them from the data, or set data.hygiene.on_overlap=drop to leave them out"
        )
    log.warning("data hygiene: dropped %d of %d %s examples found in evaluation data (e.g. %s)", len(found), len(corpus), split, found[0])
    return ParallelCorpus(kept)


class BenchmarkHygiene:
    """Refuses (`on_overlap="raise"`) or drops (`"drop"`) training / validation examples found in test data.

    `benchmarks` maps a LAReQA benchmark name to the directory of its files (None: the cache,
    downloaded once); the run's own validation and test splits are always checked.
    """

    def __init__(
        self,
        benchmarks: Mapping[str, str | os.PathLike | None] | None = None,
        cache_dir: str | os.PathLike | None = None,
        on_overlap: str = "raise",
    ) -> None:
        if on_overlap not in ON_OVERLAP:
            raise ValueError(f"data.hygiene.on_overlap={on_overlap!r}: expected one of {ON_OVERLAP}")
        self.benchmarks = dict(benchmarks or {})
        self.cache_dir = cache_dir
        self.on_overlap = on_overlap

    def __call__(self, data: TrainingData) -> TrainingData:
        external = [lareqa_held_out(name, data_dir, self.cache_dir) for name, data_dir in sorted(self.benchmarks.items())]
        test = [HeldOut.from_corpus("test split", data.test)] if data.test is not None else []
        val = [HeldOut.from_corpus("validation split", data.val)] if data.val is not None else []
        train = filter_corpus(data.train, [*external, *test, *val], "train", self.on_overlap)
        held_val = filter_corpus(data.val, [*external, *test], "val", self.on_overlap) if data.val is not None else None
        return replace(data, train=train, val=held_val)
