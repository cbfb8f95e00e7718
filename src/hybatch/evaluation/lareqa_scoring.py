"""LAReQA evaluation (XQuAD-R, MLQA-R): mono-, cross- and multilingual answer retrieval.

The benchmarks themselves (files, parsing, the flat pool) are built in `hybatch.data.lareqa_benchmarks`.

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

import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hybatch.atomic import atomic_open
from hybatch.data.lareqa_benchmarks import CANDIDATE_TEXTS, SOURCES, LareqaBenchmark, load_lareqa_benchmark
from hybatch.retrieval.index import TextEncoder
from hybatch.retrieval.metrics import RankingMetrics, ranking_metrics_from_embeddings

log = logging.getLogger(__name__)

# Reported metric name -> name in `RankingMetrics.values`.
PAIR_METRICS = {"mAP": "AP", "R@1": "R@1", "nDCG@10": "nDCG@10", "MRR@10": "MRR@10"}
MULTI_METRICS = {"mAP": "AP", "R@10": "R@10", "nDCG@10": "nDCG@10", "MRR@10": "MRR@10"}


def score_lareqa(
    bench: LareqaBenchmark,
    question_emb: Tensor,
    candidate_emb: Tensor,
    *,
    chunk_size: int | None = None,
    progress: bool = False,
    per_query_path: str | os.PathLike | None = None,
) -> dict[str, float]:
    """All settings and metrics from one embedding per question and per candidate (keys: module docstring);
    with `per_query_path`, also every query's values per setting there (`write_per_query`)."""
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
    if per_query_path is not None:
        write_per_query(per_query_path, bench, res)
    return aggregate_lareqa(bench, res)


def per_query_rows(bench: LareqaBenchmark, res: RankingMetrics) -> Iterator[dict[str, Any]]:
    """One row per question and setting it takes part in, with what pools and pairs results across runs:
    `benchmark`, `qid`, `lang` (the question's), `article`, `setting` (mono / cross / multi),
    `candidate_lang` (the pool's language, `all` for multi), `AP`, `R@1` (mono / cross) or `R@10` and
    `rank_distance` (multi: lowest minus highest rank of its relevant candidates, the term of language
    bias). A question without an answer in a language has no row for that pair, as in the averages."""
    columns = {clang: res.column(clang) for clang in bench.languages}
    answered = (res.n_relevant > 0).tolist()
    ap = res.values["AP"].tolist()
    r1 = res.values["R@1"].tolist()
    r10 = res.values["R@10"].tolist()
    distance = res.rank_distance().tolist()
    all_col = res.column("all")
    for i, q in enumerate(bench.questions):
        head = {"benchmark": bench.name, "qid": q.qid, "lang": q.lang, "article": q.article}
        for clang, col in columns.items():
            if answered[i][col]:
                setting = "mono" if clang == q.lang else "cross"
                yield {**head, "setting": setting, "candidate_lang": clang, "AP": ap[i][col], "R@1": r1[i][col]}
        yield {**head, "setting": "multi", "candidate_lang": "all", "AP": ap[i][all_col], "R@10": r10[i][all_col],
               "rank_distance": distance[i]}


def write_per_query(path: str | os.PathLike, bench: LareqaBenchmark, res: RankingMetrics) -> Path:
    """`per_query_rows` as JSON lines, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in per_query_rows(bench, res))
    log.info("per-query results of %s: %s", bench.name, path)
    return path


def aggregate_lareqa(bench: LareqaBenchmark, res: RankingMetrics) -> dict[str, float]:
    """Macro-averages of per-query metrics: per pair, mono / cross, per query language in the multi pool."""
    out: dict[str, float] = {}
    pairs: dict[str, list[dict[str, float]]] = {"mono": [], "cross": []}
    multi: list[dict[str, float]] = []
    all_col = res.column("all")
    bias = res.rank_distance().double()
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
    per_query_path: str | os.PathLike | None = None,
) -> dict[str, float]:
    """Encode every distinct question and candidate text once, then score all settings (and, with
    `per_query_path`, write every query's values: `write_per_query`)."""
    question_emb = _encode_unique([q.text for q in bench.questions], encoder, "query", batch_size, progress)
    candidate_emb = _encode_unique(bench.candidate_texts, encoder, "passage", batch_size, progress)
    return score_lareqa(
        bench, question_emb, candidate_emb, chunk_size=chunk_size, progress=progress, per_query_path=per_query_path
    )


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
            data_dir_key=f"benchmark.benchmarks.{self.name}.data_dir",
        )

    def evaluate(self, encoder: TextEncoder, *, batch_size: int, work_dir: Path, progress: bool = True) -> dict[str, float]:
        """The metrics; every query's values go to `<work_dir>/per_query.jsonl`."""
        if self._bench is None:
            self.prepare()
        return evaluate_lareqa(
            self._bench, encoder, batch_size=batch_size, progress=progress, per_query_path=Path(work_dir) / "per_query.jsonl"
        )
