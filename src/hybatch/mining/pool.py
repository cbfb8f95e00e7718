"""The candidates of one language, and which of them a question may never get as a negative.

A parallel corpus gives each language a pool: the distinct passages of that language (its positives,
optionally its existing hard negatives too), one row per normalised text, so a duplicate of a passage
is the same row. Negatives are never drawn from another language: a row's hard negatives must be in its
passage language, or a monolingual batch stops being monolingual.

Exclusion is by **passage group**: examples whose positives share a passage key (`PassageKeys`: the
same `passage_id`, the same language passage id, or the same normalised text) in ANY language are one
group (transitively). A question never gets a candidate of its own group: not its positive, not a
duplicate of it, not another example's positive that is the same passage, and not the passage of an
example whose answer is the same as its own in some other language (a translation of its answer).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from hybatch.data.corpus import ParallelCorpus, normalise_passage

POOLS = ("positives", "positives_and_negatives")


@dataclass(frozen=True)
class LanguagePool:
    """Candidate passages of one language. `groups[row]` is the passage group of a row that is some
    example's positive, and a negative number of its own (in no group) for a row that is only an
    existing hard negative; `positive_rows[example]` is the row of that example's positive."""

    lang: str
    texts: list[str]
    groups: np.ndarray
    positive_rows: dict[int, int]

    def fingerprint(self) -> str:
        """sha256 of the pool's texts in row order: embeddings written for another pool are refused."""
        digest = hashlib.sha256()
        for text in self.texts:
            digest.update(text.encode("utf-8") + b"\0")
        return digest.hexdigest()


def passage_groups(corpus: ParallelCorpus) -> list[int]:
    """Per example, its passage group: the smallest example index linked to it by a shared passage key
    in any language."""
    keys = corpus.passage_keys()
    parent = list(range(len(corpus)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[int, int] = {}
    for i, example in enumerate(corpus.examples):
        for lang in example.translations:
            a, b = root(i), root(owner.setdefault(keys.positive(i, lang), i))
            parent[max(a, b)] = min(a, b)
    return [root(i) for i in range(len(corpus))]


def build_pool(corpus: ParallelCorpus, lang: str, groups: list[int], pool: str = "positives") -> LanguagePool:
    """The pool of `lang`: positives in corpus order, then (with `positives_and_negatives`) the existing
    hard negatives that are no positive; the first raw text of a normalised text stands for it."""
    if pool not in POOLS:
        raise ValueError(f"pool={pool!r}: expected one of {POOLS}")
    texts: list[str] = []
    row_groups: list[int] = []
    rows: dict[str, int] = {}
    positive_rows: dict[int, int] = {}

    def add(text: str, group: int | None) -> int:
        key = normalise_passage(text)
        if key not in rows:
            rows[key] = len(texts)
            texts.append(text)
            row_groups.append(-1 - len(row_groups) if group is None else group)
        return rows[key]

    for i, example in enumerate(corpus.examples):
        if lang in example.translations:
            positive_rows[i] = add(example.translations[lang].positive, groups[i])
    if pool == "positives_and_negatives":
        for example in corpus.examples:
            for text in example.translations[lang].negatives if lang in example.translations else ():
                add(text, None)
    return LanguagePool(lang, texts, np.asarray(row_groups, dtype=np.int64), positive_rows)
