"""`hybatch-search`: the run file equals a brute-force numpy search of the same embeddings; encoding split
over processes (`shard_index` / `num_shards`) gives the same run; bad input is named before any encoding."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from hybatch.config import CONFIG_DIR
from hybatch.data.beir_folder import BeirFormatError
from hybatch.retrieval.index import EmbeddingShards
from hybatch.retrieval.runs import read_trec_run
from hybatch.search import run_search

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["river", "mountain", "city", "music", "history", "science", "football", "language", "ocean", "forest", "king", "war", "bridge", "train", "star"]


def write_files(root: Path, n_docs: int = 37) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    docs = [{"_id": f"doc-{i}", "title": WORDS[i % 15] if i % 2 else "", "text": " ".join(rng.choice(WORDS, 5))} for i in range(n_docs)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    queries = [{"_id": f"q{i}", "text": " ".join(rng.choice(WORDS, 3))} for i in range(6)]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    return root / "corpus.jsonl", root / "queries.jsonl"


def search_cfg(tmp_path: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("search", overrides=["model=tiny", "progress=false", "shard_size=8", *overrides])


@pytest.fixture(scope="module")
def encoder(cache_dir):
    """model=tiny, built once for the module (the console-script test loads it the user's way)."""
    return instantiate(search_cfg(Path(".")).model).eval()


@pytest.fixture
def tiny(encoder, monkeypatch):
    monkeypatch.setattr("hybatch.backbones.loading.load_encoder", lambda cfg: encoder)
    return encoder


def brute_force(embeddings_root: Path, encoder, queries: dict[str, str], top_k: int) -> dict[str, list[tuple[str, float]]]:
    """numpy top-k over the stored embeddings of every part, queries encoded by the same model."""
    ids, rows = [], []
    for part in sorted(embeddings_root.iterdir()):
        store = EmbeddingShards.open(part)
        ids += store.ids()
        rows += [np.asarray(a, dtype=np.float32) for a in store.arrays()]
    corpus = np.concatenate(rows)
    q = encoder.encode(list(queries.values()), "query", progress=False).numpy()
    scores = q @ corpus.T
    out = {}
    for qid, row in zip(queries, scores, strict=True):
        hits = sorted(zip(row.tolist(), ids, strict=True), reverse=True)[:top_k]  # score, then id, descending
        out[qid] = [(doc, score) for score, doc in hits]
    return out


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_run_file_equals_brute_force_search(tmp_path, tiny, index):
    corpus, queries = write_files(tmp_path)
    out = tmp_path / "run.trec"
    cfg = search_cfg(tmp_path, f"corpus={corpus}", f"queries={queries}", f"out={out}", "top_k=7", f"index={index}")
    assert run_search(cfg) == out
    texts = {json.loads(line)["_id"]: json.loads(line)["text"] for line in queries.read_text().splitlines()}
    expected = brute_force(tmp_path / "run.trec.embeddings", tiny, texts, 7)
    lines = [line.split() for line in out.read_text().splitlines()]
    assert [(p[0], p[1], p[3], p[5]) for p in lines] == [(q, "Q0", str(r), "hybatch") for q in texts for r in range(1, 8)]
    run = {q: [(p[2], float(p[4])) for p in lines if p[0] == q] for q in texts}
    for qid, hits in expected.items():
        assert [d for d, _ in run[qid]] == [d for d, _ in hits]
        assert [s for _, s in run[qid]] == pytest.approx([s for _, s in hits], abs=1e-6)


def test_encoding_split_over_processes_gives_the_same_run(tmp_path, tiny):
    corpus, queries = write_files(tmp_path)
    common = [f"corpus={corpus}", f"queries={queries}", "top_k=5", f"embeddings_dir={tmp_path / 'emb'}", "num_shards=3"]
    for i in range(3):  # what three processes would run, each its own part
        assert run_search(search_cfg(tmp_path, *common, f"out={tmp_path / 'unused.trec'}", f"shard_index={i}")) is None
    parts = sorted(p.name for p in (tmp_path / "emb").iterdir())
    assert parts == ["part-00000-of-00003", "part-00001-of-00003", "part-00002-of-00003"]
    assert [len(EmbeddingShards.open(tmp_path / "emb" / p)) for p in parts] == [13, 12, 12]
    assert not (tmp_path / "unused.trec").exists()
    run_search(search_cfg(tmp_path, *common, f"out={tmp_path / 'split.trec'}"))
    run_search(search_cfg(tmp_path, f"corpus={corpus}", f"queries={queries}", "top_k=5", f"out={tmp_path / 'one.trec'}"))
    split, one = read_trec_run(tmp_path / "split.trec"), read_trec_run(tmp_path / "one.trec")
    assert split.keys() == one.keys()
    for qid in one:
        assert list(split[qid]) == list(one[qid]) and list(split[qid].values()) == pytest.approx(list(one[qid].values()), abs=1e-6)


def test_bad_input_is_named_before_encoding(tmp_path):
    corpus, queries = write_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="corpus=.*nowhere.jsonl: no such file"):
        run_search(search_cfg(tmp_path, f"corpus={tmp_path / 'nowhere.jsonl'}", f"queries={queries}", "out=x"))
    with pytest.raises(FileNotFoundError, match="only a run with shard_index may leave it out"):
        run_search(search_cfg(tmp_path, f"corpus={corpus}", "out=x"))
    with pytest.raises(ValueError, match="shard_index=3: expected 0 .. num_shards-1 = 2"):
        run_search(search_cfg(tmp_path, f"corpus={corpus}", "out=x", "num_shards=3", "shard_index=3"))
    with pytest.raises(ValueError, match="index='lsh'"):
        run_search(search_cfg(tmp_path, f"corpus={corpus}", f"queries={queries}", "out=x", "index=lsh"))
    with pytest.raises(ValueError, match="tag='my run': the last column of a TREC run line"):
        run_search(search_cfg(tmp_path, f"corpus={corpus}", f"queries={queries}", "out=x", "tag='my run'"))
    with pytest.raises(ValueError, match="index=shards is an exact scan"):
        run_search(search_cfg(tmp_path, f"corpus={corpus}", f"queries={queries}", "out=x", "index=shards", "+index_options.nprobe=4"))
    bad = tmp_path / "queries.tsv"
    bad.write_text("q0\tfine\nq1 no tab here\n")
    with pytest.raises(BeirFormatError, match=r"queries.tsv:2: expected 'id<TAB>text'"):
        run_search(search_cfg(tmp_path, f"corpus={corpus}", f"queries={bad}", "out=x"))


def test_tsv_corpus_and_queries(tmp_path, tiny):
    (tmp_path / "corpus.tsv").write_text("".join(f"d{i}\t{' '.join(WORDS[i % 13:i % 13 + 3])} n{i}\n" for i in range(30)))
    (tmp_path / "queries.tsv").write_text("a\triver mountain\nb\tking war bridge\n")
    out = tmp_path / "run.trec"
    run_search(search_cfg(tmp_path, f"corpus={tmp_path / 'corpus.tsv'}", f"queries={tmp_path / 'queries.tsv'}", f"out={out}", "top_k=4"))
    texts = {"a": "river mountain", "b": "king war bridge"}
    expected = brute_force(tmp_path / "run.trec.embeddings", tiny, texts, 4)
    assert {q: list(hits) for q, hits in read_trec_run(out).items()} == {q: [d for d, _ in h] for q, h in expected.items()}


def test_console_script_is_installed_and_composes(tmp_path):
    script = shutil.which("hybatch-search")
    assert script, "hybatch-search is not installed: pip install -e . --no-deps"
    proc = subprocess.run([script, "corpus=c.jsonl", "queries=q.jsonl", "out=r.trec", "top_k=3", "index=hnsw", "--cfg", "job"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = yaml.safe_load(proc.stdout)
    assert (job["corpus"], job["top_k"], job["index"], job["model"]["_target_"]) == (
        "c.jsonl", 3, "hnsw", "hybatch.backbones.builders.me5_small_bundled")
