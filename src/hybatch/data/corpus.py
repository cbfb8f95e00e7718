"""Parallel training corpora: examples that share an id across languages."""

from __future__ import annotations

import hashlib
import logging
import unicodedata
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
    # Identities of the positive passage (in any language), e.g. XQuAD-R's answer sentence: examples
    # sharing one, or a positive text, have the same passage (see `ParallelCorpus.passage_keys`).
    passage_ids: tuple[str, ...] = ()


def normalise_passage(text: str) -> str:
    """The form in which two positives count as the same passage: NFKC, case-folded, single spaces."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@dataclass
class ParallelCorpus:
    """A list of parallel examples; ids are unique within a dataset."""

    examples: list[ParallelExample] = field(default_factory=list)
    _passage_keys: list[int] | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> ParallelExample:
        return self.examples[index]

    def languages(self) -> set[str]:
        return {lang for ex in self.examples for lang in ex.translations}

    def passage_keys(self) -> list[int]:
        """Per example, a key shared by exactly the examples whose positives are the same passage.

        Two examples are linked when they share a `passage_ids` entry or the normalised text of a
        positive in any language; keys are the connected components (computed once). The loss masks
        the positives of same-key examples out of each other's negatives.
        """
        if self._passage_keys is None:
            parent = list(range(len(self.examples)))

            def root(i: int) -> int:
                while parent[i] != i:
                    parent[i] = parent[parent[i]]
                    i = parent[i]
                return i

            owner: dict[bytes, int] = {}
            for i, ex in enumerate(self.examples):
                tokens = [f"id\0{p}" for p in ex.passage_ids]
                tokens += [f"text\0{normalise_passage(t.positive)}" for t in ex.translations.values()]
                for token in tokens:
                    j = owner.setdefault(hashlib.blake2b(token.encode(), digest_size=16).digest(), i)
                    parent[root(i)] = root(j)
            self._passage_keys = [root(i) for i in range(len(self.examples))]
            shared = Counter(self._passage_keys)
            n = sum(c for c in shared.values() if c > 1)
            if n:
                log.info(
                    "%d of %d examples share their positive passage with another (%d passages): they are "
                    "not used as each other's negatives", n, len(self.examples), sum(c > 1 for c in shared.values()),
                )
        return self._passage_keys

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
