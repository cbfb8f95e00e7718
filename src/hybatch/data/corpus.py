"""Parallel training corpora: examples that share an id across languages."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hybatch.samplers import DatasetGroup

log = logging.getLogger(__name__)


class CorpusError(ValueError):
    """A corpus cannot serve the configured training setup."""


@dataclass(frozen=True)
class Translation:
    """One language version of an example."""

    query: str
    positive: str
    negatives: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParallelExample:
    """A query-passage pair in several languages, with the dataset it belongs to."""

    id: str
    dataset: str
    translations: Mapping[str, Translation]
    article: str | None = None  # source document, for splits and overlap checks
    origin: str | None = None  # "file:line" it was read from, for error messages


@dataclass
class ParallelCorpus:
    """A list of parallel examples; ids are unique within a dataset."""

    examples: list[ParallelExample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> ParallelExample:
        return self.examples[index]

    def languages(self) -> set[str]:
        return {lang for ex in self.examples for lang in ex.translations}

    def groups(self, languages: Sequence[str], split: str = "train") -> dict[str, DatasetGroup]:
        """Per dataset, the examples available in every one of its languages.

        A dataset's languages are the configured ones it has at all; examples missing one of
        them are left out (the count is logged), so any batch language can be drawn for any
        example of the dataset.
        """
        present = self.languages()
        unknown = [lang for lang in languages if lang not in present]
        if unknown:
            raise CorpusError(
                f"data.languages has {unknown}, which the {split} data does not contain; "
                f"its languages are {sorted(present)}"
            )
        by_dataset: dict[str, list[int]] = defaultdict(list)
        for i, ex in enumerate(self.examples):
            by_dataset[ex.dataset].append(i)
        groups = {}
        for name, indices in sorted(by_dataset.items()):
            counts = Counter(lang for i in indices for lang in self.examples[i].translations if lang in languages)
            langs = [lang for lang in languages if counts[lang]]
            if not langs:
                log.warning("%s dataset %r has none of the languages %s: skipped", split, name, list(languages))
                continue
            kept = [i for i in indices if all(lang in self.examples[i].translations for lang in langs)]
            if len(kept) < len(indices):
                log.warning(
                    "%s dataset %r: %d of %d examples lack one of its languages %s and are left out",
                    split, name, len(indices) - len(kept), len(indices), langs,
                )
            groups[name] = DatasetGroup(kept, langs, dict(counts))
        if not groups:
            raise CorpusError(f"the {split} split has no examples in the languages {list(languages)}")
        return groups
