"""MIRACL end to end on a tiny fixture corpus (flat and official layouts), against pytrec_eval, and
the resumable embedding shards / FAISS index underneath."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval
import torch
import torch.nn.functional as F
from helpers import HashEncoder

from hybatch.data.miracl_files import MiraclFormatError, load_miracl_language
from hybatch.evaluation.miracl_task import MiraclTask, evaluate_miracl_language
from hybatch.retrieval import DenseIndex, EmbeddingShards, encode_shards, search_shards
from hybatch.retrieval.index import ShardStoreError

WORDS = ["river", "mountain", "city", "music", "history", "science", "football", "language", "ocean", "forest", "king", "war", "bridge", "train", "star"]


def _corpus(n: int = 30) -> list[dict[str, str]]:
    gen = torch.Generator().manual_seed(0)
    docs = []
    for i in range(n):
        picks = torch.randperm(len(WORDS), generator=gen)[:4].tolist()
        docs.append({"docid": f"{i // 3}#{i % 3}", "title": WORDS[picks[0]].title(), "text": " ".join(WORDS[p] for p in picks[1:]) + f" {i}"})
    return docs


QUERIES = {"q0": "river mountain city", "q1": "music history", "q2": "ocean forest king", "q3": "train star bridge"}
TEMPLATE = "{title} {text}"


def _ranking(docs: list[dict[str, str]]) -> dict[str, list[str]]:
    """Brute-force ranking with the same encoder: what exact search must return."""
    enc = HashEncoder()
    d = enc.encode([TEMPLATE.format(**doc).strip() for doc in docs], "passage")
    q = enc.encode(list(QUERIES.values()), "query")
    order = (q @ d.T).argsort(dim=1, descending=True)
    return {qid: [docs[j]["docid"] for j in row] for qid, row in zip(QUERIES, order.tolist(), strict=True)}


def _qrels(ranking: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    r = ranking
    return {
        "q0": {r["q0"][0]: 1, r["q0"][1]: 0, r["q0"][6]: 1},  # rank-7 relevant: missed by top-4
        "q1": {r["q1"][2]: 1},
        "q2": {r["q2"][0]: 0},  # no relevant passage: not scored
        "q3": {r["q3"][1]: 1, r["q3"][25]: 1, r["q3"][3]: 0},
    }


def _write_flat(root: Path, lang: str, docs, qrels) -> None:
    d = root / lang
    d.mkdir(parents=True)
    (d / "topics.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in QUERIES.items()), encoding="utf-8")
    (d / "qrels.tsv").write_text("".join(f"{q}\tQ0\t{doc}\t{rel}\n" for q, j in qrels.items() for doc, rel in j.items()))
    (d / "corpus.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs), encoding="utf-8")


def _write_official(root: Path, lang: str, docs, qrels) -> None:
    base = root / f"miracl-v1.0-{lang}"
    (base / "topics").mkdir(parents=True)
    (base / "qrels").mkdir()
    (base / "topics" / f"topics.miracl-v1.0-{lang}-dev.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in QUERIES.items()))
    (base / "qrels" / f"qrels.miracl-v1.0-{lang}-dev.tsv").write_text(
        "".join(f"{q} Q0 {doc} {rel}\n" for q, j in qrels.items() for doc, rel in j.items())
    )
    corpus = root / f"miracl-corpus-v1.0-{lang}"
    corpus.mkdir()
    # docs-10 must come after docs-2: natural order keeps the corpus (and resumable shards) stable.
    for part, chunk in zip((0, 2, 10), (docs[:10], docs[10:20], docs[20:]), strict=True):
        with gzip.open(corpus / f"docs-{part}.jsonl.gz", "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(doc) + "\n" for doc in chunk)


def _reference(ranking, qrels, k: int, cut: int) -> dict[str, float]:
    run = {q: {doc: float(k - i) for i, doc in enumerate(ranking[q][:k])} for q in QUERIES}
    scored = {q: j for q, j in qrels.items() if any(v > 0 for v in j.values())}
    ref = pytrec_eval.RelevanceEvaluator(scored, {f"ndcg_cut.{cut}", f"recall.{k}"}).evaluate(run)
    return {
        f"nDCG@{cut}": float(np.mean([ref[q][f"ndcg_cut_{cut}"] for q in scored])),
        f"R@{k}": float(np.mean([ref[q][f"recall_{k}"] for q in scored])),
    }


@pytest.mark.parametrize("index", ["flat", "shards", "hnsw", "ivf"])
def test_miracl_end_to_end_matches_pytrec_eval(tmp_path, index):
    docs = _corpus()
    ranking = _ranking(docs)
    qrels = _qrels(ranking)
    _write_flat(tmp_path / "data", "sw", docs, qrels)
    data = load_miracl_language("sw", tmp_path / "data")
    assert len(list(data.corpus())) == 30 and data.qrels["q0"][ranking["q0"][1]] == 0
    metrics = evaluate_miracl_language(
        data, HashEncoder(), tmp_path / "work", top_k=4, ndcg_at=3, index=index, shard_size=7, progress=False
    )
    expected = _reference(ranking, qrels, k=4, cut=3)
    assert metrics == pytest.approx(expected, abs=1e-9)
    assert metrics["R@4"] < 1  # q0 and q3 have a relevant passage outside the top 4


def test_miracl_task_official_layout_keys(tmp_path):
    docs = _corpus()
    ranking = _ranking(docs)
    qrels = _qrels(ranking)
    for lang in ("yo", "sw"):
        _write_official(tmp_path / "data", lang, docs, qrels)
    task = MiraclTask(languages=["yo", "sw"], data_dir=str(tmp_path / "data"), top_k=8, dtype="float16", shard_size=8)
    metrics = task.evaluate(HashEncoder(), batch_size=8, work_dir=tmp_path / "work", progress=False)
    expected = _reference(ranking, qrels, k=8, cut=10)
    assert set(metrics) == {f"{x}/{m}" for x in ("yo", "sw", "mean") for m in ("nDCG@10", "R@8")}
    for key, value in expected.items():  # float16 shards: tiny score differences, same ranking here
        assert metrics[f"yo/{key}"] == pytest.approx(value, abs=1e-6)
        assert metrics[f"mean/{key}"] == pytest.approx(value, abs=1e-6)
    store = EmbeddingShards.open(tmp_path / "work" / "yo" / "embeddings")
    assert store.complete and len(store) == 30 and [len(a) for a in store.arrays()] == [8, 8, 8, 6]
    assert store.ids() == [d["docid"] for d in docs]


def test_shards_resume_after_interruption(tmp_path):
    records = [(f"d{i}", f"passage number {i} about {WORDS[i % len(WORDS)]}") for i in range(23)]
    with pytest.raises(KeyboardInterrupt):  # probe + 2 shards, then interrupted in the third
        encode_shards(tmp_path / "emb", records, HashEncoder(fail_after=3), shard_size=5, progress=False)
    partial = EmbeddingShards.open(tmp_path / "emb")
    assert not partial.complete and len(partial) == 10
    assert not list((tmp_path / "emb").glob("*.part"))  # no half-written shard left

    resumed = HashEncoder()
    store = encode_shards(tmp_path / "emb", records, resumed, shard_size=5, progress=False)
    assert [t for _, call in resumed.calls[1:] for t in call] == [t for _, t in records[10:]]  # finished shards skipped
    clean = encode_shards(tmp_path / "clean", records, HashEncoder(), shard_size=5, progress=False)
    assert np.array_equal(np.concatenate(list(store.arrays())), np.concatenate(list(clean.arrays())))
    assert store.ids() == [i for i, _ in records]

    again = HashEncoder()
    encode_shards(tmp_path / "emb", records, again, shard_size=5, progress=False)
    assert len(again.calls) == 1  # complete: only the probe
    with pytest.raises(ShardStoreError, match="fingerprint"):
        encode_shards(tmp_path / "emb", records, HashEncoder(), shard_size=5, fingerprint="other corpus", progress=False)
    with pytest.raises(ShardStoreError, match="another encoder"):
        encode_shards(tmp_path / "emb", records, _Shifted(), shard_size=5, progress=False)


class _Shifted(HashEncoder):
    """Same dimension, different embeddings: another model."""

    def encode(self, texts, role, batch_size: int = 64, progress: bool = True) -> torch.Tensor:
        return super().encode(texts, role).roll(1, dims=1)


def test_index_kinds_agree_with_exact_search(tmp_path):
    gen = torch.Generator().manual_seed(1)
    vectors = F.normalize(torch.randn(300, 16, generator=gen), dim=1)
    queries = F.normalize(torch.randn(5, 16, generator=gen), dim=1)
    truth = (queries @ vectors.T).topk(10, dim=1).indices.numpy()
    flat = DenseIndex(16)
    flat.add(vectors)
    _, ids = flat.search(queries, 10)
    assert np.array_equal(ids, truth)
    records = [(str(i), str(i)) for i in range(300)]

    class Table:
        def encode(self, texts, role, batch_size=64, progress=True):
            return torch.stack([vectors[int(t)] if t.isdigit() else vectors[0] for t in texts])

    store = encode_shards(tmp_path / "s", records, Table(), shard_size=64, progress=False)
    _, ids = search_shards(store, queries, 10, rows_per_block=50, progress=False)
    assert np.array_equal(ids, truth)
    ivf = DenseIndex(16, "ivf", nlist=4, nprobe=4)  # all lists probed: exact
    ivf.add_shards(store, progress=False)
    assert np.array_equal(ivf.search(queries, 10)[1], truth)
    with pytest.raises(ValueError, match="expected one of"):
        DenseIndex(16, "lsh")


def test_bad_miracl_files_name_file_and_line(tmp_path):
    docs = _corpus(6)
    _write_flat(tmp_path, "sw", docs, {"q0": {docs[0]["docid"]: 1}})
    (tmp_path / "sw" / "qrels.tsv").write_text("q0 Q0 0#0 1\nq0 0#1 1\n")
    with pytest.raises(MiraclFormatError, match=r"qrels.tsv:2: expected 'query_id Q0 doc_id relevance"):
        load_miracl_language("sw", tmp_path)
    with pytest.raises(MiraclFormatError, match="sw/topics.tsv"):
        load_miracl_language("sw", tmp_path / "nowhere")
    (tmp_path / "sw" / "qrels.tsv").write_text("q0 Q0 0#0 1\n")
    (tmp_path / "sw" / "corpus.jsonl").write_text('{"docid": "a", "title": "t", "text": "x"}\n{"docid": "b", "text": 3}\n')
    data = load_miracl_language("sw", tmp_path)
    with pytest.raises(MiraclFormatError, match=r"corpus.jsonl:2: expected an object with string fields"):
        list(data.corpus())


@pytest.mark.network
def test_miracl_from_the_hub(tmp_path):
    pytest.importorskip("datasets")
    data = load_miracl_language("yo", source="hf", cache_dir=tmp_path)
    assert len(data.queries) > 50 and set(data.qrels) <= set(data.queries)
    docid, title, text = next(data.corpus())
    assert docid and text
