"""BEIR folders (`evaluate.py benchmark=beir`): metrics equal pytrec_eval's on the written run file,
BEIR's conventions (graded nDCG, judged queries only, identical ids dropped), bad files named by line."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
import pytrec_eval
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torchmetrics.retrieval import RetrievalMRR, RetrievalNormalizedDCG, RetrievalRecall

from hybatch.config import CONFIG_DIR
from hybatch.data.beir_folder import BeirFormatError, load_beir_folder
from hybatch.evaluation.beir_task import BeirTask
from hybatch.retrieval.runs import RunFormatError, read_trec_run

WORDS = ["river", "mountain", "city", "music", "history", "science", "football", "language", "ocean", "forest", "king", "war", "bridge", "train", "star"]


class WordEncoder:
    """Deterministic bag of hashed words (with a little role-dependent noise); no model needed."""

    def encode(self, texts, role, batch_size: int = 64, progress: bool = True) -> torch.Tensor:
        out = torch.zeros(len(texts), 24)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, zlib.crc32(word.encode()) % 24] += 1.0
        out[:, 0] += 0.01 if role == "query" else 0.02
        return F.normalize(out, dim=1)


def write_beir(root: Path, n_docs: int = 40) -> dict[str, dict[str, int]]:
    """A BEIR folder: titles on some documents, a numeric `_id`, a query id that is also a document id
    (q1), an unjudged query (q9), graded qrels, a query with only grade-0 judgments (q4)."""
    gen = torch.Generator().manual_seed(0)
    docs = []
    for i in range(n_docs):
        words = [WORDS[j] for j in torch.randperm(len(WORDS), generator=gen)[:4].tolist()]
        doc = {"_id": i if i == 7 else f"d{i}", "text": " ".join(words[1:])}
        if i % 3:
            doc["title"] = words[0]
        docs.append(doc)
    docs.append({"_id": "q1", "title": "", "text": "river mountain city"})  # the query itself, as in ArguAna
    queries = {"q0": "river mountain", "q1": "river mountain city", "q2": "music history war", "q3": "ocean star",
               "q4": "king bridge", "q9": "never judged"}  # fmt: skip
    qrels = {
        "q0": {"d1": 2, "d5": 1, "d20": 1, "d33": 0},
        "q1": {"d2": 1, "7": 2, "q1": 1},
        "q2": {"d3": 1, "d39": 2, "missing-doc": 1},  # a judged document absent from the corpus: a miss
        "q3": {"d10": 1},
        "q4": {"d11": 0},
    }
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    lines = [f"{q}\t{d}\t{g}\n" for q, judged in qrels.items() for d, g in judged.items()]
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(lines))
    return qrels


def pytrec_means(qrels: dict, run: dict, top_k: int) -> dict[str, float]:
    """BEIR's numbers: pytrec_eval's nDCG@10 and R@top_k, and MRR@10 as recip_rank of each top 10."""
    top10 = {q: dict(sorted(hits.items(), key=lambda h: (h[1], h[0]), reverse=True)[:10]) for q, hits in run.items()}
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", f"recall.{top_k}"}).evaluate(run)
    mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    n = len(full)
    return {
        "nDCG@10": sum(r["ndcg_cut_10"] for r in full.values()) / n,
        f"R@{top_k}": sum(r[f"recall_{top_k}"] for r in full.values()) / n,
        "MRR@10": sum(r["recip_rank"] for r in mrr.values()) / n,
    }


def torchmetrics_means(qrels: dict, run: dict, top_k: int) -> dict[str, float]:
    """The same with torchmetrics.retrieval: judged-relevant documents the run misses are appended
    below every hit and below filler up to the deepest cutoff (torchmetrics sees only the list it is given)."""
    preds, target, indexes = [], [], []
    for i, (qid, judged) in enumerate(qrels.items()):
        hits = sorted(run.get(qid, {}).items(), key=lambda h: (h[1], h[0]), reverse=True)
        docs = [d for d, _ in hits]
        docs += [""] * (max(10, top_k) - len(docs)) + [d for d, g in judged.items() if g > 0 and d not in docs]
        preds += [float(len(docs) - j) for j in range(len(docs))]
        target += [max(judged.get(d, 0), 0) for d in docs]
        indexes += [i] * len(docs)
    args = (torch.tensor(preds), torch.tensor(target), torch.tensor(indexes))
    return {
        "nDCG@10": float(RetrievalNormalizedDCG(top_k=10)(*args)),
        f"R@{top_k}": float(RetrievalRecall(top_k=top_k)(args[0], args[1] > 0, args[2])),
        "MRR@10": float(RetrievalMRR(top_k=10)(args[0], args[1] > 0, args[2])),
    }


@pytest.mark.parametrize("index", ["flat", "shards", "hnsw"])
def test_beir_metrics_equal_pytrec_eval_on_the_run_file(tmp_path, index):
    qrels = write_beir(tmp_path / "beir")
    task = BeirTask(data_dir=str(tmp_path / "beir"), top_k=8, recall_at=[8], index=index, shard_size=16)
    metrics = task.evaluate(WordEncoder(), batch_size=8, work_dir=tmp_path / "out", progress=False)
    assert set(metrics) == {"nDCG@10", "R@8", "MRR@10"}
    run = read_trec_run(tmp_path / "out" / "run.trec")
    assert set(run) == set(qrels)  # the judged queries only (q9 is not searched)
    assert all(len(hits) == 8 for hits in run.values())
    assert "q1" not in run["q1"]  # its own id dropped, and still 8 hits
    expected = pytrec_means(qrels, run, 8)
    assert metrics == pytest.approx(expected, abs=1e-12)
    assert 0 < metrics["nDCG@10"] < 1 and metrics["R@8"] < 1  # not a degenerate case
    # torchmetrics.retrieval agrees to its float32 precision (why the exact one is kept: retrieval/metrics.py).
    assert torchmetrics_means(qrels, run, 8) == pytest.approx(expected, abs=1e-6)


def test_run_file_keeps_trec_eval_order_and_exact_scores(tmp_path):
    write_beir(tmp_path / "beir")
    task = BeirTask(data_dir=str(tmp_path / "beir"), top_k=40, recall_at=[40], exclude_query_id=False)
    task.evaluate(WordEncoder(), batch_size=8, work_dir=tmp_path / "out", progress=False)
    lines = [line.split() for line in (tmp_path / "out" / "run.trec").read_text().splitlines()]
    assert all(len(p) == 6 and p[1] == "Q0" and p[5] == "hybatch" for p in lines)
    q1 = [p for p in lines if p[0] == "q1"]
    assert q1[0][2] == "q1" and [int(p[3]) for p in q1] == list(range(1, 41))
    for qid in ("q0", "q3"):
        hits = [(float(p[4]), p[2]) for p in lines if p[0] == qid]
        assert hits == sorted(hits, reverse=True)  # score, then doc id, descending: trec_eval's order
        assert len({s for s, _ in hits}) < len(hits)  # ties occur in this corpus, and are ordered


def test_evaluate_py_writes_beir_keys_and_run(tmp_path, cache_dir):
    from hybatch.evaluation.runner import run_evaluation

    qrels = write_beir(tmp_path / "beir")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("evaluate", overrides=[
            "benchmark=beir", f"benchmark.data_dir={tmp_path / 'beir'}", "model=tiny", f"paths.output_dir={tmp_path / 'run'}",
        ])  # fmt: skip
    metrics = run_evaluation(cfg)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(saved) == {"beir/nDCG@10", "beir/R@100", "beir/MRR@10"} and saved == pytest.approx(metrics)
    run = read_trec_run(tmp_path / "run" / "beir" / "run.trec")
    expected = pytrec_means(qrels, run, 100)
    assert {k.removeprefix("beir/"): v for k, v in saved.items()} == pytest.approx(expected, abs=1e-12)


def test_beir_needs_a_folder_before_any_model_loads():
    with pytest.raises(ValueError, match="benchmark.data_dir=<folder>"):
        BeirTask()
    with pytest.raises(ValueError, match="index='lsh'"):
        BeirTask(data_dir="x", index="lsh")


@pytest.mark.parametrize(
    "file, content, message",
    [
        ("corpus.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "b", "text": 3}\n', r"corpus.jsonl:2: expected an object with '_id'"),
        ("corpus.jsonl", '{"_id": "a", "text": "x"}\n\n{"_id": "b" "text": "y"}\n', r"corpus.jsonl:3: invalid JSON"),
        ("corpus.jsonl", '{"_id": "a b", "text": "x"}\n', r"corpus.jsonl:1: document '_id' 'a b' is empty or holds whitespace"),
        ("queries.jsonl", '{"_id": "q0", "text": "x"}\n{"_id": "q0", "text": "y"}\n', r"queries.jsonl:2: query id 'q0' appears twice"),
        ("qrels/test.tsv", "q0\td1\t1\n", r"test.tsv:1: expected the header 'query-id\tcorpus-id\tscore'"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq0\td1\t1\nq0 d2 1\n", r"test.tsv:3: expected 'query-id<TAB>corpus-id<TAB>score"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq0\td1\thigh\n", r"test.tsv:2: expected 'query-id"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq0\td1\t1\nqx\td1\t1\n", r"test.tsv:3: query-id 'qx' is not in the queries file"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq0\td1\t1\nq0\td1\t2\n", r"test.tsv:3: \('q0', 'd1'\) is judged twice"),
    ],
)
def test_bad_beir_files_name_file_and_line(tmp_path, file, content, message):
    write_beir(tmp_path)
    (tmp_path / file).write_text(content)
    with pytest.raises(BeirFormatError, match=message):
        data = load_beir_folder(tmp_path)
        list(data.corpus())


def test_missing_beir_files_are_named(tmp_path):
    write_beir(tmp_path)
    with pytest.raises(BeirFormatError, match=r"qrels/dev.tsv not found \(split='dev'; the folder has qrels for \['test'\]\)"):
        load_beir_folder(tmp_path, "dev")
    (tmp_path / "queries.jsonl").unlink()
    with pytest.raises(BeirFormatError, match=r"queries.jsonl not found: a BEIR folder holds corpus.jsonl"):
        load_beir_folder(tmp_path)
    with pytest.raises(BeirFormatError, match="is not a directory"):
        load_beir_folder(tmp_path / "nowhere")
    (tmp_path / "bad.trec").write_text("q0 Q0 d1 1 0.5 tag\nq0 Q0 d2 2 0.4\n")
    with pytest.raises(RunFormatError, match=r"bad.trec:2: expected 'qid Q0 docid rank score tag'"):
        read_trec_run(tmp_path / "bad.trec")
