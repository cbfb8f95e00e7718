"""Parallel training corpora: examples that share an id across languages."""

from __future__ import annotations

import hashlib
import logging
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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
    # Identities of the positive passage: `passage_ids` hold in every language (parallel JSONL's
    # `passage_id`), `language_passage_ids` in one (XQuAD-R's answer sentence, segmented per language).
    # Examples sharing one, or a positive text, in a language have the same passage there (`PassageKeys`).
    passage_ids: tuple[str, ...] = ()
    language_passage_ids: Mapping[str, str] = field(default_factory=dict)


def normalise_passage(text: str) -> str:
    """The form in which two positives count as the same passage: NFKC, case-folded, single spaces."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@dataclass(frozen=True)
class DatasetGroup:
    """The examples of one training dataset and the languages they all have."""

    examples: Sequence[int]
    languages: Sequence[str]
    language_counts: Mapping[str, int] = field(default_factory=dict)


NO_KEY = -1


def _digest(lang: str, kind: str, value: str) -> bytes:
    return hashlib.blake2b(f"{lang}\0{kind}\0{value}".encode(), digest_size=16).digest()


class PassageKeys:
    """A key per (example, language) positive, shared by exactly the positives that are the same
    passage IN THAT LANGUAGE: the same `passage_ids` entry, the same `language_passage_ids[lang]`,
    or the same normalised text (linked transitively). Keys are per language because a batch shows
    each example's passage in one language: two questions whose answers coincide in German but not
    in English are not each other's false negatives in an English batch.

    A hard negative gets the key of the positive whose text it is (`NO_KEY` when it is no positive
    of its language), so the loss also masks a negative that is some row's answer.
    """

    def __init__(self, examples: Sequence[ParallelExample]) -> None:
        self._examples = examples
        self._first: list[int] = []
        parent: list[int] = []

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        owner: dict[bytes, int] = {}
        for ex in examples:
            self._first.append(len(parent))
            for lang, t in ex.translations.items():
                node = len(parent)
                parent.append(node)
                tokens = [_digest(lang, "id", p) for p in ex.passage_ids]
                if lang in ex.language_passage_ids:
                    tokens.append(_digest(lang, "lid", ex.language_passage_ids[lang]))
                tokens.append(_digest(lang, "text", normalise_passage(t.positive)))
                for token in tokens:
                    parent[root(node)] = root(owner.setdefault(token, node))
        self._keys = [root(i) for i in range(len(parent))]
        self._text_keys = {token: self._keys[node] for token, node in owner.items()}
        shared = Counter(self._keys)
        n = sum(c for c in shared.values() if c > 1)
        if n:
            log.info(
                "%d of %d (example, language) positives share their passage with another example's in the same "
                "language (%d passages): they are not used as each other's negatives",
                n, len(self._keys), sum(c > 1 for c in shared.values()),
            )  # fmt: skip

    def positive(self, example: int, lang: str) -> int:
        """The key of example `example`'s positive in `lang`."""
        langs = list(self._examples[example].translations)
        return self._keys[self._first[example] + langs.index(lang)]

    def negatives(self, lang: str, texts: Sequence[str]) -> list[int]:
        """Keys of hard negatives in `lang`: the key of the positive each one is, else `NO_KEY`."""
        return [self._text_keys.get(_digest(lang, "text", normalise_passage(t)), NO_KEY) for t in texts]

    def shared_counts(self, lang: str) -> tuple[int, int]:
        """(positives in `lang` that share their key with another, number of such keys)."""
        keys = Counter(self.positive(i, lang) for i, ex in enumerate(self._examples) if lang in ex.translations)
        return sum(c for c in keys.values() if c > 1), sum(c > 1 for c in keys.values())


@dataclass
class ParallelCorpus:
    """A list of parallel examples; ids are unique within a dataset."""

    examples: list[ParallelExample] = field(default_factory=list)
    _passage_keys: PassageKeys | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> ParallelExample:
        return self.examples[index]

    def languages(self) -> set[str]:
        return {lang for ex in self.examples for lang in ex.translations}

    def passage_keys(self) -> PassageKeys:
        """The identity of every positive passage per language (computed once; see `PassageKeys`)."""
        if self._passage_keys is None:
            self._passage_keys = PassageKeys(self.examples)
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
