"""Data preparation runs: cache hits, a run killed by SIGKILL resuming to the same output, the card,
shards, and `prepare_data.py` + `train.py` end to end on the tiny translation model."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from hybatch.config import CONFIG_DIR
from hybatch.data.parallel_jsonl import read_parallel_jsonl
from hybatch.prepare.pipeline import run_prepare

REPO = Path(__file__).resolve().parents[1]
WORDS = ("river", "city", "king", "war", "music", "film", "team", "game", "school", "paper", "light", "water",
         "stone", "garden", "north", "history")  # fmt: skip


def write_source(path: Path, n: int, sentences: int = 2) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            words = [WORDS[(i * 7 + k) % len(WORDS)] for k in range(6)]
            positive = " ".join(f"The {words[s]} {words[s + 1]} was built in {1800 + i + s}." for s in range(sentences))
            row = {"id": f"ex-{i}", "query": f"when was the {words[0]} {words[1]} built {i}?", "positive": positive}
            if i % 4 == 0:
                row["negatives"] = [f"The {words[2]} is old."]
            f.write(json.dumps(row) + "\n")
    return path


def config(src: Path, out: Path, *overrides: str):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("prepare", overrides=[
            "dataset=jsonl", f"dataset.path={src}", "dataset.name=toy", "translate=stand_in", "languages=[de,es]",
            f"out_dir={out}", "hygiene=null", "progress=false", *overrides,
        ])  # fmt: skip


def card(out: Path, name: str = "toy") -> dict:
    return json.loads((out / f"{name}.card.json").read_text(encoding="utf-8"))


def test_second_run_translates_nothing_and_writes_the_same_file(tmp_path):
    src = write_source(tmp_path / "in.jsonl", 30)
    path = run_prepare(config(src, tmp_path / "out"))
    first = path.read_bytes()
    stats = card(tmp_path / "out")["translation_stats"]
    assert stats["de"]["translated"] == stats["de"]["sentences"] > 0 and stats["de"]["cache_hits"] == 0
    run_prepare(config(src, tmp_path / "out"))
    again = card(tmp_path / "out")["translation_stats"]
    assert {lang: s["translated"] for lang, s in again.items()} == {"de": 0, "es": 0}
    assert again["de"]["cache_hits"] == stats["de"]["sentences"]
    assert path.read_bytes() == first
    corpus = read_parallel_jsonl([path])
    assert len(corpus) == 30 and corpus.languages() == {"en", "de", "es"}
    ex = corpus[0]
    assert ex.translations["de"].query == "<de> " + " ".join(reversed(ex.translations["en"].query.split()))
    # passages are translated sentence by sentence and rejoined
    assert ex.translations["en"].positive == "The river city was built in 1800. The city king was built in 1801."
    assert ex.translations["de"].positive == "<de> 1800. in built was city river The <de> 1801. in built was king city The"
    assert ex.translations["de"].negatives == ("<de> old. is king The",)


def test_card_records_source_model_languages_and_counts(tmp_path):
    src = write_source(tmp_path / "in.jsonl", 12)
    with src.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "dup", "query": "when was the river city built 0?", "positive": "x"}) + "\n")
        f.write(json.dumps({"id": "e", "query": "", "positive": "y"}) + "\n")
    run_prepare(config(src, tmp_path / "out", "limit=10"))
    c = card(tmp_path / "out")
    assert c["dataset"] == "toy" and c["source"]["kind"] == "FileSource" and c["source"]["license"] is None
    assert c["translation"]["cache_key"] == "stand-in-v1"
    assert c["languages"] == ["en", "de", "es"]
    assert c["counts"]["source"] == {"rows": 10, "examples": 10}  # reading stops at the limit
    assert c["counts"]["after_limit"] == 10 and c["counts"]["written"] == 10
    assert c["counts"]["examples_with_language"] == {"en": 10, "de": 10, "es": 10}


def test_shards_partition_the_examples(tmp_path):
    src = write_source(tmp_path / "in.jsonl", 10)
    paths = [run_prepare(config(src, tmp_path / "out", f"shard={k}", "num_shards=3")) for k in range(3)]
    assert [p.name for p in paths] == [f"toy.shard-0000{k}-of-00003.jsonl" for k in range(3)]
    ids = [ex.id for p in paths for ex in read_parallel_jsonl([p]).examples]
    assert sorted(ids) == sorted(f"ex-{i}" for i in range(10))
    assert read_parallel_jsonl(paths)[0].dataset == "toy"  # the shards are one dataset


def command(src: Path, out: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(REPO / "prepare_data.py"), "dataset=jsonl", f"dataset.path={src}", "dataset.name=toy",
            "translate=stand_in", "languages=[de,es]", f"out_dir={out}", "hygiene=null", "translate.batch_size=4",
            f"hydra.run.dir={out.parent / ('run-' + out.name)}", *overrides]  # fmt: skip


def cached_rows(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM translations").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_sigkill_during_translation_then_resume_gives_the_uninterrupted_output(tmp_path):
    src = write_source(tmp_path / "in.jsonl", 24)
    out = tmp_path / "killed"
    proc = subprocess.Popen(command(src, out, "translate.delay_s=0.2"), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while cached_rows(out / "translation_cache.sqlite") < 8:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = cached_rows(out / "translation_cache.sqlite")
    assert 8 <= finished < 24 * 3  # part of the de texts only
    assert list(out.glob("*.jsonl")) == [] and not (out / "toy.card.json").exists()

    subprocess.run(command(src, out), cwd=tmp_path, check=True, capture_output=True)
    stats = card(out)["translation_stats"]
    assert stats["de"]["cache_hits"] == finished and stats["de"]["translated"] == stats["de"]["sentences"] - finished

    reference = run_prepare(config(src, tmp_path / "reference"))
    assert (out / "toy.jsonl").read_bytes() == reference.read_bytes()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary file left behind


@pytest.mark.slow
def test_prepare_then_train_end_to_end_offline_with_the_tiny_translator(tmp_path):
    """The two commands of the issue as written, offline with an empty cache: the benchmarks of the
    contamination guard cannot be obtained (skipped, recorded in the card), and data.batch_size=100
    is more than the 30 pairs hold (train uses a batch of 30)."""
    src = write_source(tmp_path / "in.jsonl", 30, sentences=1)
    env = {**os.environ, "HYBATCH_CACHE": str(tmp_path / "empty-cache"), "WANDB_MODE": "offline"}
    out = tmp_path / "prepared"
    prep = subprocess.run([sys.executable, str(REPO / "prepare_data.py"), "dataset=jsonl", f"dataset.path={src}", "dataset.name=toy",
                           "translate=tiny", "languages=[de,es]", f"out_dir={out}"],
                          cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert prep.returncode == 0, prep.stdout[-3000:]
    assert "hygiene.benchmarks.mlqa_r=<directory of its files>" in prep.stdout
    c = card(out)
    assert c["translation"]["target"].endswith("TinyTranslator") and c["counts"]["contaminated_dropped"] == 0
    assert c["hygiene"]["checked"] == {} and sorted(c["hygiene"]["unavailable"]) == ["mlqa_r", "xquad_r"]
    assert len(read_parallel_jsonl([out / "toy.jsonl"])) == c["counts"]["written"] == 30
    run = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "data=parallel_jsonl", f"data.source.train=[{out / 'toy.jsonl'}]",
         "data.languages=[en,de,es]", "model=tiny", "sampler=hybrid", "trainer.max_steps=5"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:]
    assert "xquad_r is unavailable" in run.stdout and "using batch size" in run.stdout


def test_the_old_source_group_spelling_still_works_with_a_warning():
    from hybatch.prepare.command import renamed_overrides

    with pytest.warns(FutureWarning, match="the `source` group is now `dataset`"):
        got = renamed_overrides(["source=jsonl", "source.path=in.jsonl", "+source.x=1", "~source", "data.source.y=2", "sources=3"])
    assert got == ["dataset=jsonl", "dataset.path=in.jsonl", "+dataset.x=1", "~dataset", "data.source.y=2", "sources=3"]

