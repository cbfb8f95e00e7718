"""XQuAD-R split by article into train / val / test: the offline stand-in for the paper's data.

Each question becomes a parallel training example (question -> the sentence holding its answer,
in every language); the held-out articles also form LAReQA benchmarks for validation and test.
No article is in two splits, so no passage seen in training is a test candidate.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybatch.data.corpus import ParallelCorpus, ParallelExample, Translation
from hybatch.data.lareqa_benchmarks import (
    XQUAD_R,
    LareqaLanguage,
    build_lareqa_benchmark,
    lareqa_files,
    load_lareqa_language,
    render_candidate,
)
from hybatch.data.parallel_jsonl import read_parallel_jsonl
from hybatch.data.training_data import TrainingData

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FOLD_KEYS = ("folds", "fold")


class SplitConfigError(ValueError):
    """The article split is misconfigured."""


def split_articles(
    articles: Sequence[str], split: Mapping[str, float | Sequence[str]], seed: int
) -> dict[str, list[str]]:
    """Assign every article to exactly one split.

    `split` gives, per split, a fraction of the articles (seeded shuffle) or an explicit list of
    titles; with lists, articles named nowhere go to train. With `folds` and `fold`, the test split
    is fold `fold` of `folds` (see `fold_split`).
    """
    unknown_keys = set(split) - set(SPLITS) - set(FOLD_KEYS)
    if unknown_keys:
        raise SplitConfigError(f"data.source.split has keys {sorted(unknown_keys)}; expected {SPLITS + FOLD_KEYS}")
    if any(split.get(k) is not None for k in FOLD_KEYS):
        return fold_split(articles, split, seed)
    values = [split.get(s) for s in SPLITS]
    if all(isinstance(v, (int, float)) or v is None for v in values):
        fractions = [float(v or 0.0) for v in values]
        if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise SplitConfigError(f"data.source.split fractions {dict(zip(SPLITS, fractions))} must be >= 0 and sum to 1")
        order = [articles[i] for i in np.random.default_rng(seed).permutation(len(articles))]
        n_val = max(1, round(fractions[1] * len(order))) if fractions[1] > 0 else 0
        n_test = max(1, round(fractions[2] * len(order))) if fractions[2] > 0 else 0
        if n_val + n_test >= len(order):
            raise SplitConfigError(f"data.source.split leaves no training article out of {len(order)}")
        return {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    lists = {s: list(v) for s, v in zip(SPLITS, values) if v is not None and not isinstance(v, (int, float))}
    if len(lists) != sum(v is not None for v in values):
        raise SplitConfigError("data.source.split: give fractions for every split or title lists, not a mix")
    known = set(articles)
    for name, titles in lists.items():
        missing = [t for t in titles if t not in known]
        if missing:
            raise SplitConfigError(f"data.source.split.{name}: unknown articles {missing}")
    seen: dict[str, str] = {}
    for name, titles in lists.items():
        for t in titles:
            if t in seen:
                raise SplitConfigError(f"article {t!r} is in both split {seen[t]!r} and {name!r}")
            seen[t] = name
    out = {s: lists.get(s, []) for s in SPLITS}
    if "train" not in lists:
        out["train"] = [a for a in articles if a not in seen]
    return out


def fold_split(articles: Sequence[str], split: Mapping[str, Any], seed: int) -> dict[str, list[str]]:
    """Cross-validation: the articles, shuffled by `seed`, cut into `split["folds"]` disjoint test
    folds of (nearly) equal size; fold `split["fold"]` is the test split, so folds 0..K-1 test every
    article exactly once. `split["val"]` (a fraction of all articles) of the other articles, drawn
    with `(seed, fold)`, are the validation split; the rest train. `train` / `test` fractions are not used.
    """
    folds, fold, val = split.get("folds"), split.get("fold"), split.get("val")
    if folds is None or fold is None:
        raise SplitConfigError("cross-validation needs both data.source.split.folds=K and data.source.split.fold=i")
    if not isinstance(folds, int) or not 2 <= folds <= len(articles):
        raise SplitConfigError(f"data.source.split.folds={folds!r}: expected an integer in [2, {len(articles)}]")
    if not isinstance(fold, int) or not 0 <= fold < folds:
        raise SplitConfigError(f"data.source.split.fold={fold!r}: expected an integer in [0, {folds - 1}]")
    if not isinstance(val, (int, float)) or not 0 < val < 1:
        raise SplitConfigError(f"data.source.split.val={val!r}: with folds, expected a fraction of the articles in (0, 1)")
    order = [articles[i] for i in np.random.default_rng(seed).permutation(len(articles))]
    bounds = np.linspace(0, len(order), folds + 1).round().astype(int)
    test = order[bounds[fold] : bounds[fold + 1]]
    rest = order[: bounds[fold]] + order[bounds[fold + 1] :]
    n_val = max(1, round(val * len(order)))
    if n_val >= len(rest):
        raise SplitConfigError(f"data.source.split.val={val} leaves no training article out of {len(rest)}")
    chosen = set(np.random.default_rng([seed, fold]).choice(len(rest), size=n_val, replace=False).tolist())
    return {
        "test": test,
        "val": [a for i, a in enumerate(rest) if i in chosen],
        "train": [a for i, a in enumerate(rest) if i not in chosen],
    }


def examples_from_lareqa(
    data: Mapping[str, LareqaLanguage], articles: set[str], passage_text: str, dataset: str
) -> list[ParallelExample]:
    """One parallel example per question id of the given articles; other sentences of the
    answer's paragraph are its hard negatives."""
    by_id: dict[str, dict[str, Translation]] = {}
    article_of: dict[str, str] = {}
    passages: dict[str, dict[str, str]] = {}
    for lang, lang_data in data.items():
        paragraphs: dict[int, list[int]] = {}
        for i, c in enumerate(lang_data.candidates):
            paragraphs.setdefault(c.paragraph, []).append(i)
        for q in lang_data.questions:
            if q.article not in articles:
                continue
            answer = lang_data.candidates[q.answer]
            negatives = tuple(
                render_candidate(lang_data.candidates[j], passage_text)
                for j in paragraphs[answer.paragraph]
                if j != q.answer
            )
            by_id.setdefault(q.qid, {})[lang] = Translation(q.text, render_candidate(answer, passage_text), negatives)
            article_of[q.qid] = q.article
            # The answer sentence: questions sharing it in a language share their positive there.
            passages.setdefault(q.qid, {})[lang] = f"{q.article}/{answer.paragraph}:{answer.sentence}"
    return [
        ParallelExample(qid, dataset, t, article_of[qid], language_passage_ids=passages[qid]) for qid, t in by_id.items()
    ]


def with_mined_negatives(corpus: ParallelCorpus, path: str | os.PathLike) -> ParallelCorpus:
    """The training examples with the hard negatives of a mined file (`mine_negatives.py
    input=xquad_r_split ...` on the same split) in place of the answer paragraph's other sentences.

    Every id of the file must be a training example here: a file mined on another split could hold
    negatives from this split's validation or test articles. Languages the file lacks for an
    example keep the paragraph's sentences; the count is logged."""
    mined = {ex.id: ex for ex in read_parallel_jsonl([path])}
    train = {ex.id for ex in corpus}
    foreign = sorted(set(mined) - train)
    if foreign:
        raise SplitConfigError(
            f"data.source.negatives={path}: {len(foreign)} ids are not training examples of this split "
            f"(e.g. {foreign[:3]}); mine it with the same data.source.split / split_seed / max_articles"
        )
    kept = 0
    examples = []
    for ex in corpus:
        source = mined.get(ex.id)
        translations = dict(ex.translations)
        for lang, t in ex.translations.items():
            if source is not None and lang in source.translations:
                translations[lang] = dataclasses.replace(t, negatives=source.translations[lang].negatives)
            else:
                kept += 1
        examples.append(dataclasses.replace(ex, translations=translations))
    log.info("hard negatives from %s; %d (example, language) pairs not in it keep their paragraph's sentences",
             Path(path).name, kept)
    return ParallelCorpus(examples)


def load_xquad_r_split(
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    languages: Sequence[str] | None = None,
    split: Mapping[str, float | Sequence[str]] | None = None,
    split_seed: int = 0,
    passage_text: str = "sentence",
    url: str | None = None,
    name: str = "xquad_r",
    max_articles: int | None = None,
    negatives: str | os.PathLike | None = None,
) -> TrainingData:
    """XQuAD-R from `data_dir` (else a one-time download into the cache), split by article.

    `languages` are the languages loaded (None: all 11 of XQuAD-R, or every `<lang>.json` of
    `data_dir`, which may be any benchmark in the LAReQA format): the data module trains on its
    configured languages among them, and the val / test benchmarks use all of them (el and vi: zero-shot).
    `url` (with `{name}`) replaces the pinned, checksummed download of `hybatch.data.lareqa_benchmarks.XQUAD_R`.
    `max_articles` keeps the first articles only, in file order, for a quick look. `negatives`: a
    parallel JSONL of mined hard negatives for the training examples (`with_mined_negatives`).
    """
    if languages is not None and data_dir is None and url is None:
        unknown = [lang for lang in languages if lang not in XQUAD_R.languages]
        if unknown:
            raise SplitConfigError(
                f"XQuAD-R has no language {unknown}; it has {list(XQUAD_R.languages)} (data.data_dir=<folder> reads "
                "any folder of <language>.json files in its format)"
            )
    files = lareqa_files("xquad_r", languages, data_dir, cache_dir, url_template=url, data_dir_key="data.data_dir")
    data = {lang: load_lareqa_language(path, lang) for lang, path in files.items()}
    titles = list(dict.fromkeys(q.article for lang_data in data.values() for q in lang_data.questions))
    if max_articles is not None:
        titles = titles[:max_articles]
    parts = split_articles(titles, split or {"train": 0.8, "val": 0.1, "test": 0.1}, split_seed)
    log.info("XQuAD-R articles per split: %s", {s: len(a) for s, a in parts.items()})
    corpora = {
        s: ParallelCorpus(examples_from_lareqa(data, set(parts[s]), passage_text, name)) if parts[s] else None
        for s in SPLITS
    }
    if negatives is not None:
        if corpora["train"] is None:
            raise SplitConfigError(f"data.source.negatives={negatives}: the split has no training articles to give them to")
        corpora["train"] = with_mined_negatives(corpora["train"], negatives)
    benchmarks = {
        s: build_lareqa_benchmark(f"{name}_{s}", data, set(parts[s]), candidate_text=passage_text) if parts[s] else None
        for s in ("val", "test")
    }
    return TrainingData(
        corpora["train"], corpora["val"], corpora["test"], benchmarks["val"], benchmarks["test"], split=parts
    )
