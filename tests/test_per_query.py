"""Per-query LAReQA results (per_query.jsonl): checked against a naive per-query loop with sklearn and trec_eval, and
against the averages they are the terms of; written by evaluate.py's runner per benchmark."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from helpers import random_benchmark, trec_eval_ranks
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict
from sklearn.metrics import average_precision_score

from hybatch.config import CONFIG_DIR
from hybatch.evaluation.lareqa_scoring import score_lareqa
from hybatch.evaluation.runner import run_evaluation

LANGS = ["en", "de", "ar"]


def test_rows_equal_a_naive_per_query_computation_and_average_to_the_metrics(tmp_path: Path) -> None:
    bench, q_emb, c_emb = random_benchmark()
    metrics = score_lareqa(bench, q_emb, c_emb, chunk_size=4, per_query_path=tmp_path / "pq.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "pq.jsonl").read_text().splitlines()]
    scores = q_emb @ c_emb.T

    want = []
    for i, q in enumerate(bench.questions):
        rel = list(bench.relevance[i])
        head = {"benchmark": "rand", "qid": q.qid, "lang": q.lang, "article": q.article}
        for cl in LANGS:
            members = [j for j, c in enumerate(bench.candidates) if c.lang == cl]
            rel_c = [j for j in rel if j in members]
            if rel_c:
                ap = average_precision_score([int(j in rel_c) for j in members], scores[i, members].numpy())
                ranks = trec_eval_ranks(scores[i], members, rel_c)
                r1 = sum(k <= 1 for k in ranks) / len(ranks)  # recall: the share of relevant items ranked first
                want.append({**head, "setting": "mono" if cl == q.lang else "cross", "candidate_lang": cl, "AP": ap, "R@1": r1})
        everything = list(range(len(bench.candidates)))
        r = trec_eval_ranks(scores[i], everything, rel)
        ap = average_precision_score([int(j in rel) for j in everything], scores[i].numpy())
        want.append({**head, "setting": "multi", "candidate_lang": "all", "AP": ap, "R@10": sum(k <= 10 for k in r) / len(r),
                     "rank_distance": max(r) - min(r)})
    assert len(rows) == len(want)
    for got, ref in zip(rows, want, strict=True):
        assert got == pytest.approx(ref, abs=1e-9)

    # The metrics are macro-averages of these rows: per pair, then over pairs / query languages.
    pairs, multi = defaultdict(list), defaultdict(list)
    for row in rows:
        (multi[row["lang"]] if row["setting"] == "multi" else pairs[row["lang"], row["candidate_lang"]]).append(row)
    for (ql, cl), group in pairs.items():
        assert metrics[f"pair/{ql}-{cl}/mAP"] == pytest.approx(sum(r["AP"] for r in group) / len(group))
    for ql, group in multi.items():
        assert metrics[f"multi/{ql}/lang_bias"] == pytest.approx(sum(r["rank_distance"] for r in group) / len(group))
        assert metrics[f"multi/{ql}/R@10"] == pytest.approx(sum(r["R@10"] for r in group) / len(group))


def test_evaluate_writes_one_file_per_benchmark(mlqa_like_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[
            "benchmark=mlqa_r", "benchmark.languages=[en,de,ar]", f"benchmark.data_dir={mlqa_like_dir}",
            f"paths.output_dir={out}", f"paths.cache_dir={tmp_path / 'cache'}",
        ])
    with open_dict(cfg):
        cfg.model = OmegaConf.create({"_target_": "helpers.HashEncoder", "dim": 32})
    metrics = run_evaluation(cfg)
    rows = [json.loads(line) for line in (out / "mlqa_r" / "per_query.jsonl").read_text().splitlines()]
    multi = [r for r in rows if r["setting"] == "multi"]
    assert len(multi) == 7 and {r["qid"] for r in multi} == {"q1", "q2", "q3", "q4"}  # 4 en + 2 de + 1 ar questions
    assert {r["article"] for r in rows} == {"Art"} and {r["benchmark"] for r in rows} == {"mlqa_r"}
    en = [r for r in multi if r["lang"] == "en"]
    assert metrics["mlqa_r/multi/en/mAP"] == pytest.approx(sum(r["AP"] for r in en) / len(en))
