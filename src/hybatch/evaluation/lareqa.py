"""LAReQA evaluation (XQuAD-R, MLQA-R): mono-, cross- and multilingual answer retrieval.

Each question and each candidate is encoded once; every setting is then read off one chunked pass
over the (questions x all candidates) scores, with the candidates of each language as a sub-pool
(see `hybatch.retrieval.metrics`). Settings (Roy et al. 2020; the paper's "Evaluation" section):

- pair q-c: questions in language q against the candidates in language c; mono = the pairs with
  q == c, cross = every ordered pair q != c (a question with no answer in c is skipped for that pair);
- multi: questions of language q against the pool of all languages, macro-averaged over q;
- language bias (Huang et al. 2023): in the multi pool, rank of the lowest-ranked relevant candidate
  minus rank of the highest-ranked one, averaged per query language, then macro-averaged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from hybatch.data.lareqa import CANDIDATE_TEXTS, Candidate, LareqaLanguage, Question, load_lareqa_language
from hybatch.data.lareqa import candidate_text as render_candidate
from hybatch.data.sources import resolve_files
from hybatch.retrieval.index import TextEncoder
from hybatch.retrieval.metrics import RankingMetrics, ranking_metrics_from_embeddings

log = logging.getLogger(__name__)

_LAREQA_URL = "https://raw.githubusercontent.com/google-research-datasets/lareqa/master/{folder}/{{name}}"


@dataclass(frozen=True)
class LareqaSource:
    """Where a LAReQA benchmark's `{lang}.json` files come from."""

    languages: tuple[str, ...]
    url_template: str
    cache_subdir: str


SOURCES: dict[str, LareqaSource] = {
    "xquad_r": LareqaSource(
        ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"),
        _LAREQA_URL.format(folder="xquad-r"),
        "xquad-r",
    ),
    # The LAReQA repository keeps MLQA-R (MLQA dev with sentence breaks) in `mlqa-dev-r/`.
    "mlqa_r": LareqaSource(
        ("ar", "de", "en", "es", "hi", "vi", "zh"),
        _LAREQA_URL.format(folder="mlqa-dev-r"),
        "mlqa-r",
    ),
}

# Reported metric name -> name in `RankingMetrics.values`.
PAIR_METRICS = {"mAP": "AP", "R@1": "R@1", "nDCG@10": "nDCG@10", "MRR@10": "MRR@10"}
MULTI_METRICS = {"mAP": "AP", "R@10": "R@10", "nDCG@10": "nDCG@10", "MRR@10": "MRR@10"}


@dataclass
class LareqaBenchmark:
    """Questions and candidates of all languages in one flat pool, candidates grouped by language.

    `relevance[i]` lists the pool indices of question i's answer sentence in every language that
    has a question with the same id (its own language included).
    """

    name: str
    languages: tuple[str, ...]
    questions: list[Question]
    candidates: list[Candidate]
    candidate_texts: list[str]
    relevance: list[tuple[int, ...]]
    question_lang: Tensor = field(repr=False)  # (Q,) index into languages
    candidate_lang: Tensor = field(repr=False)  # (N,) index into languages, non-decreasing

    def __str__(self) -> str:
        return (
            f"{self.name}: {len(self.languages)} languages ({', '.join(self.languages)}), "
            f"{len(self.questions)} questions, {len(self.candidates)} candidates"
        )


def build_lareqa_benchmark(
    name: str,
    data: Mapping[str, LareqaLanguage],
    articles: set[str] | None = None,
    candidate_text: str = "sentence",
) -> LareqaBenchmark:
    """Flatten parsed language files (in `data`'s order) into one benchmark.

    `articles` keeps only the questions and candidates of those articles (titles are shared across
    languages), e.g. the held-out part of an article-level train/val/test split.
    """
    if candidate_text not in CANDIDATE_TEXTS:
        raise ValueError(f"candidate_text={candidate_text!r}: expected one of {CANDIDATE_TEXTS}")
    if not data:
        raise ValueError(f"{name}: no languages given")
    languages = tuple(data)
    for lang, part in data.items():
        if part.lang != lang:
            raise ValueError(f"{name}: data[{lang!r}] holds language {part.lang!r}")
    if articles is not None:
        known = {c.article for part in data.values() for c in part.candidates}
        if not known & set(articles):
            raise ValueError(
                f"{name}: none of the {len(articles)} requested articles exists (e.g. {sorted(articles)[:3]}); "
                f"the files have e.g. {sorted(known)[:3]}"
            )

    candidates: list[Candidate] = []
    questions: list[Question] = []
    answer_of: list[int] = []  # pool index of each kept question's own answer
    for lang, part in data.items():
        remap: dict[int, int] = {}
        for i, cand in enumerate(part.candidates):
            if articles is None or cand.article in articles:
                remap[i] = len(candidates)
                candidates.append(cand)
        kept = [q for q in part.questions if articles is None or q.article in articles]
        if not kept:
            raise ValueError(f"{name}: language {lang!r} has no question" + (" in the selected articles" if articles else ""))
        for q in kept:
            if q.answer not in remap:
                raise ValueError(f"{name}: question {q.qid} ({lang}) of article {q.article!r} has its answer in another article")
            questions.append(q)
            answer_of.append(remap[q.answer])

    answers_by_qid: dict[str, list[int]] = {}
    for q, answer in zip(questions, answer_of, strict=True):
        answers_by_qid.setdefault(q.qid, []).append(answer)
    relevance = [tuple(dict.fromkeys(answers_by_qid[q.qid])) for q in questions]
    lang_index = {lang: i for i, lang in enumerate(languages)}
    return LareqaBenchmark(
        name=name,
        languages=languages,
        questions=questions,
        candidates=candidates,
        candidate_texts=[render_candidate(c, candidate_text) for c in candidates],
        relevance=relevance,
        question_lang=torch.tensor([lang_index[q.lang] for q in questions], dtype=torch.int64),
        candidate_lang=torch.tensor([lang_index[c.lang] for c in candidates], dtype=torch.int64),
    )


def load_lareqa_benchmark(
    name: str,
    languages: Sequence[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    url_template: str | None = None,
    cache_subdir: str | None = None,
    candidate_text: str = "sentence",
    articles: set[str] | None = None,
) -> LareqaBenchmark:
    """XQuAD-R (`name="xquad_r"`) or MLQA-R (`"mlqa_r"`) from `data_dir`, else downloaded once into the cache.

    Other names need `languages`, `url_template` (with `{name}` for the file name) or `data_dir`.
    """
    source = SOURCES.get(name)
    if source is None and (languages is None or (url_template is None and data_dir is None)):
        raise ValueError(f"unknown LAReQA benchmark {name!r} (known: {sorted(SOURCES)}); give languages and data_dir or url_template")
    if languages is None:
        languages = source.languages
    languages = list(languages)
    if source is not None:
        unknown = [lang for lang in languages if lang not in source.languages]
        if unknown:
            raise ValueError(f"{name} has no language {unknown}; it has {list(source.languages)}")
    if len(set(languages)) != len(languages) or not languages:
        raise ValueError(f"{name}: languages {languages} must be non-empty and distinct")
    files = resolve_files(
        [f"{lang}.json" for lang in languages],
        data_dir,
        url_template or (source.url_template if source else None),
        cache_dir,
        cache_subdir or (source.cache_subdir if source else name),
    )
    data = {lang: load_lareqa_language(files[f"{lang}.json"], lang) for lang in languages}
    bench = build_lareqa_benchmark(name, data, articles, candidate_text)
    log.info("%s", bench)
    return bench


def score_lareqa(
    bench: LareqaBenchmark,
    question_emb: Tensor,
    candidate_emb: Tensor,
    *,
    chunk_size: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """All settings and metrics from one embedding per question and per candidate (keys: module docstring)."""
    if question_emb.shape[0] != len(bench.questions) or candidate_emb.shape[0] != len(bench.candidates):
        raise ValueError(
            f"{bench.name}: got {question_emb.shape[0]} question and {candidate_emb.shape[0]} candidate embeddings "
            f"for {len(bench.questions)} questions and {len(bench.candidates)} candidates"
        )
    res = ranking_metrics_from_embeddings(
        question_emb,
        candidate_emb,
        bench.relevance,
        bench.candidate_lang,
        bench.languages,
        recall_at=(1, 10),
        ndcg_at=(10,),
        mrr_at=(10,),
        chunk_size=chunk_size,
        progress=progress,
    )
    return aggregate_lareqa(bench, res)


def aggregate_lareqa(bench: LareqaBenchmark, res: RankingMetrics) -> dict[str, float]:
    """Macro-averages of per-query metrics: per pair, mono / cross, per query language in the multi pool."""
    out: dict[str, float] = {}
    pairs: dict[str, list[dict[str, float]]] = {"mono": [], "cross": []}
    multi: list[dict[str, float]] = []
    all_col = res.column("all")
    valid = res.relevant >= 0
    lowest = res.rank.max(1).values
    highest = torch.where(valid, res.rank, torch.iinfo(res.rank.dtype).max).min(1).values
    bias = (lowest - highest).double()
    for qi, qlang in enumerate(bench.languages):
        rows = bench.question_lang == qi
        for clang in bench.languages:
            col = res.column(clang)
            answered = res.n_relevant[rows, col] > 0
            if not bool(answered.any()):
                log.warning("%s: no %s question has an answer in %s; pair %s-%s skipped", bench.name, qlang, clang, qlang, clang)
                continue
            values = {name: float(res.values[src][rows, col][answered].mean()) for name, src in PAIR_METRICS.items()}
            out.update({f"pair/{qlang}-{clang}/{name}": v for name, v in values.items()})
            pairs["mono" if qlang == clang else "cross"].append(values)
        values = {name: float(res.values[src][rows, all_col].mean()) for name, src in MULTI_METRICS.items()}
        values["lang_bias"] = float(bias[rows].mean())
        out.update({f"multi/{qlang}/{name}": v for name, v in values.items()})
        multi.append(values)
    for setting, rows_ in (*pairs.items(), ("multi", multi)):
        if rows_:
            for name in rows_[0]:
                out[f"{setting}/{name}"] = sum(r[name] for r in rows_) / len(rows_)
    return out


def evaluate_lareqa(
    bench: LareqaBenchmark,
    encoder: TextEncoder,
    batch_size: int = 64,
    progress: bool = True,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Encode every distinct question and candidate text once, then score all settings."""
    question_emb = _encode_unique([q.text for q in bench.questions], encoder, "query", batch_size, progress)
    candidate_emb = _encode_unique(bench.candidate_texts, encoder, "passage", batch_size, progress)
    return score_lareqa(bench, question_emb, candidate_emb, chunk_size=chunk_size, progress=progress)


def _encode_unique(texts: Sequence[str], encoder: TextEncoder, role: str, batch_size: int, progress: bool) -> Tensor:
    unique = list(dict.fromkeys(texts))
    with torch.inference_mode():
        emb = encoder.encode(unique, role, batch_size=batch_size, progress=progress)
    if emb.shape[0] != len(unique):
        raise RuntimeError(f"encoder returned {emb.shape[0]} embeddings for {len(unique)} {role} texts")
    if len(unique) == len(texts):
        return emb
    position = {text: i for i, text in enumerate(unique)}
    return emb[torch.tensor([position[t] for t in texts])]


class LareqaTask:
    """A configured LAReQA benchmark for `hybatch.evaluation.runner` (instantiated from `conf/benchmark/*.yaml`)."""

    def __init__(
        self,
        name: str,
        languages: Sequence[str] | None = None,
        data_dir: str | None = None,
        cache_dir: str | None = None,
        url_template: str | None = None,
        cache_subdir: str | None = None,
        candidate_text: str = "sentence",
    ) -> None:
        if candidate_text not in CANDIDATE_TEXTS:
            raise ValueError(f"benchmark {name}: candidate_text={candidate_text!r}: expected one of {CANDIDATE_TEXTS}")
        if languages is None and name not in SOURCES:
            raise ValueError(f"benchmark {name}: languages are required for a benchmark other than {sorted(SOURCES)}")
        self.name = name
        self.languages = [str(lang) for lang in (languages if languages is not None else SOURCES[name].languages)]
        self.data_dir, self.cache_dir = data_dir, cache_dir
        self.url_template, self.cache_subdir = url_template, cache_subdir
        self.candidate_text = candidate_text
        self._bench: LareqaBenchmark | None = None

    def prepare(self) -> None:
        """Find (or download) and parse the files now, so a data problem surfaces before any encoding."""
        self._bench = load_lareqa_benchmark(
            self.name,
            self.languages,
            self.data_dir,
            self.cache_dir,
            url_template=self.url_template,
            cache_subdir=self.cache_subdir,
            candidate_text=self.candidate_text,
        )

    def evaluate(self, encoder: TextEncoder, *, batch_size: int, work_dir: Path, progress: bool = True) -> dict[str, float]:
        if self._bench is None:
            self.prepare()
        return evaluate_lareqa(self._bench, encoder, batch_size=batch_size, progress=progress)
