"""`mine_negatives.py` (issue 19): hard negatives mined per language.

A parallel set of our own with planted duplicates and translations of positives is mined with a
deterministic encoder: no planted passage becomes a negative, every negative is in its row's passage
language, and the rank and score filters equal a brute-force numpy computation. A killed run resumes to
the same bytes; XQuAD-R mining draws candidates from the training articles only; training rows take
their passage language's negatives, and train.py trains on the output with data.num_hard_negatives=2.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import HashEncoder, run_python
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from hybatch.config import CONFIG_DIR
from hybatch.data.parallel_jsonl import read_parallel_jsonl
from hybatch.data.xquad_r_split import SplitConfigError, load_xquad_r_split
from hybatch.mining.command import run_mining

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
LANGS = ("en", "de", "es")
WORDS = {
    "en": "river mountain city music history science football language ocean forest king war bridge train star",
    "de": "Fluss Berg Stadt Musik Geschichte Wissenschaft Fussball Sprache Ozean Wald Koenig Krieg Bruecke Zug Stern",
    "es": "rio montana ciudad musica historia ciencia futbol lengua oceano bosque rey guerra puente tren estrella",
}
VOCAB = {lang: words.split() for lang, words in WORDS.items()}
FILTERS = ("num_negatives=3", "rank_range=[2,15]", "max_score_ratio=0.9")


def write_parallel(path: Path, n: int = 36) -> Path:
    """n random examples in en / de / es (the last one without es), plus planted passages:
    `dup-0`: its English positive is example 0's re-cased and re-spaced (the same passage), its German one
    a near copy of example 0's (so a translation of example 0's answer in German that no text identity finds);
    `pid-a` / `pid-b`: the same `passage_id`, near-copies in every language; `es-dup`: example 3's Spanish
    positive word for word, near-copies of its other languages."""
    rng = np.random.default_rng(7)
    records = []
    for i in range(n):
        translations = {}
        for lang in LANGS[: 2 if i == n - 1 else 3]:
            words = list(rng.choice(VOCAB[lang], 6))
            query = " ".join([*words[:3], str(rng.choice(VOCAB[lang]))])
            translations[lang] = {"query": f"{query}?", "positive": f"{lang}: " + " ".join(words) + "."}
        records.append({"id": f"ex-{i}", "translations": translations})

    def near(text: str, lang: str) -> str:
        return text[:-1] + f" {VOCAB[lang][0]}."

    t0, t3 = records[0]["translations"], records[3]["translations"]
    records.append({"id": "dup-0", "translations": {
        "en": {"query": "another question?", "positive": "  " + t0["en"]["positive"].upper().replace(" ", "  ")},
        "de": {"query": "eine andere Frage?", "positive": near(t0["de"]["positive"], "de")},
        "es": {"query": "otra pregunta?", "positive": near(t0["es"]["positive"], "es")}}})  # fmt: skip
    base = records[5]["translations"]
    for name, shift in (("pid-a", 0), ("pid-b", 1)):
        records.append({"id": name, "passage_id": "P7", "translations": {
            lang: {"query": base[lang]["query"], "positive": near(base[lang]["positive"], lang) if shift else base[lang]["positive"] + "!"}
            for lang in LANGS}})  # fmt: skip
    records.append({"id": "es-dup", "translations": {
        "en": {"query": t3["en"]["query"], "positive": near(t3["en"]["positive"], "en")},
        "de": {"query": t3["de"]["query"], "positive": near(t3["de"]["positive"], "de")},
        "es": {"query": t3["es"]["query"], "positive": t3["es"]["positive"]}}})  # fmt: skip
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def mine_cfg(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("mine", overrides=["progress=false", "shard_size=8", *overrides])


def mine(encoder, *overrides: str) -> list[Path]:
    return run_mining(mine_cfg(*overrides), encoder)


def norm(text: str) -> str:
    return " ".join(text.casefold().split())


def groups_of(records: list[dict]) -> list[int]:
    """Independent of the miner's code: examples linked by a passage_id or a normalised positive in any language."""
    n = len(records)
    links = [[j for j in range(n) if j != i and (
        (records[i].get("passage_id") is not None and records[i].get("passage_id") == records[j].get("passage_id"))
        or any(norm(t["positive"]) == norm(records[j]["translations"][lang]["positive"])
               for lang, t in records[i]["translations"].items() if lang in records[j]["translations"]))]
             for i in range(n)]  # fmt: skip
    group = list(range(n))
    for i in range(n):
        stack, seen = [i], {i}
        while stack:
            for j in links[stack.pop()]:
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        group[i] = min(seen)
    return group


def brute_force(records: list[dict], lang: str, num: int, low: int, high: int, ratio: float) -> dict[str, list[str]]:
    """Every question of `lang` scored against every distinct positive of `lang` with numpy; ranks 1.. over the
    whole pool, best score first; the first `num` rows in [low, high] outside the question's group and at most
    ratio x its positive's score."""
    enc = HashEncoder()
    groups = groups_of(records)
    pool, pool_group = [], []
    for i, r in enumerate(records):
        if lang in r["translations"] and norm(r["translations"][lang]["positive"]) not in map(norm, pool):
            pool.append(r["translations"][lang]["positive"])
            pool_group.append(groups[i])
    p = enc.encode(pool, "passage").numpy()
    out = {}
    for i, r in enumerate(records):
        if lang not in r["translations"]:
            continue
        q = enc.encode([r["translations"][lang]["query"]], "query").numpy()[0]
        scores = p @ q
        own = [norm(x) for x in pool].index(norm(r["translations"][lang]["positive"]))
        positive = np.float32(np.dot(q, p[own]))
        ceiling = np.float32(ratio) * positive if positive >= 0 else (2 - np.float32(ratio)) * positive
        order = sorted(range(len(pool)), key=lambda j: (-scores[j], j))
        window = order[low - 1 : high]
        out[r["id"]] = [pool[j] for j in window if pool_group[j] != groups[i] and scores[j] <= ceiling][:num]
    return out


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("index", ["flat", "shards"])
def test_negatives_equal_a_brute_force_numpy_computation(tmp_path, index):
    src = write_parallel(tmp_path / "train.jsonl")
    out = tmp_path / "mined" / "train.jsonl"
    written = mine(HashEncoder(), f"input={src}", f"out={out}", f"index={index}", *FILTERS)
    assert written == [out, tmp_path / "mined" / "train.mine.json"]
    records, mined = read_records(src), read_records(out)
    for lang in LANGS:
        want = brute_force(records, lang, 3, 2, 15, 0.9)
        got = {r["id"]: r["translations"][lang]["negatives"] for r in mined if lang in r["translations"]}
        assert got == want, lang
    # The same lines otherwise: ids, passage ids, queries and positives untouched.
    for before, after in zip(records, mined, strict=True):
        for t in after["translations"].values():
            del t["negatives"]
        assert before == after
    report = json.loads((tmp_path / "mined" / "train.mine.json").read_text())
    assert report["settings"]["rank_range"] == [2, 15] and report["settings"]["max_score_ratio"] == 0.9
    assert report["counts"]["es"]["queries"] == len(records) - 1 and report["counts"]["es"]["passages"] == len(records) - 2
    # Every filter was exercised, and the counts add up.
    totals = report["totals"]
    assert totals["same_passage"] > 0 and totals["score_ratio"] > 0 and totals["kept"] > 0
    assert totals["window"] == totals["positive"] + totals["same_passage"] + totals["score_ratio"] + totals["eligible"]
    assert totals["missing"] == 3 * totals["queries"] - totals["kept"]
    assert report["passages_per_s"] > 0 and report["model"]["identity"]


def test_planted_duplicates_and_translations_never_become_negatives(tmp_path):
    src = write_parallel(tmp_path / "train.jsonl")
    out = tmp_path / "out.jsonl"
    # A wide window with no score ceiling: without the exclusions the planted passages would be taken.
    mine(HashEncoder(), f"input={src}", f"out={out}", "num_negatives=40", "rank_range=[1,60]", "max_score_ratio=null")
    mined = {r["id"]: r for r in read_records(out)}
    partners = {"ex-0": "dup-0", "pid-a": "pid-b", "ex-3": "es-dup", "ex-5": None}
    for a, b in partners.items():
        for x, y in ((a, b), (b, a)) if b else ((a, a),):
            for lang, t in mined[x]["translations"].items():
                banned = {norm(mined[y]["translations"][lang]["positive"]), norm(t["positive"])}
                assert not banned & set(map(norm, t["negatives"])), (x, lang)
    # Every negative is a positive of its own language (the pool is per language), never another's.
    positives = {lang: {norm(r["translations"][lang]["positive"]) for r in mined.values() if lang in r["translations"]}
                 for lang in LANGS}  # fmt: skip
    for r in mined.values():
        for lang, t in r["translations"].items():
            assert t["negatives"] and all(norm(n) in positives[lang] for n in t["negatives"])
            assert len(set(map(norm, t["negatives"]))) == len(t["negatives"])


@pytest.mark.parametrize("stop", ["first language, passages", "second language, queries"])
def test_a_killed_run_resumes_to_the_same_bytes(tmp_path, stop):
    src = write_parallel(tmp_path / "train.jsonl")
    whole = HashEncoder()
    mine(whole, f"input={src}", f"out={tmp_path / 'whole.jsonl'}", *FILTERS)
    # Encoder calls, language by language (de, en, es): a probe and one call per shard of 8 passages, then
    # the same for the questions. German's calls end before English's probe.
    german = next(k for k, (_, texts) in enumerate(whole.calls) if texts[0].startswith("en: ")) - 1
    fail_after = 3 if stop.startswith("first") else german + 8  # into German's passages / English's questions
    out = tmp_path / "resumed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        mine(HashEncoder(fail_after=fail_after), f"input={src}", f"out={out}", *FILTERS)
    assert not out.exists()
    done = sorted(p.name for p in (tmp_path / "resumed.jsonl.mine-work").glob("*.negatives.json"))
    assert done == ([] if stop.startswith("first") else ["de.negatives.json"])
    again = HashEncoder()
    mine(again, f"input={src}", f"out={out}", *FILTERS)
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert sum(len(t) for _, t in again.calls) < sum(len(t) for _, t in whole.calls)  # finished shards were reused
    assert json.loads((tmp_path / "resumed.mine.json").read_text())["resumed"] is True


def test_a_rerun_with_other_filters_reuses_the_embeddings_and_searches_again(tmp_path):
    src = write_parallel(tmp_path / "train.jsonl")
    out = tmp_path / "out.jsonl"
    mine(HashEncoder(), f"input={src}", f"out={out}", *FILTERS)
    again = HashEncoder()
    mine(again, f"input={src}", f"out={out}", "num_negatives=2", "rank_range=[4,9]", "max_score_ratio=null")
    assert all(len(texts) == 1 for _, texts in again.calls)  # only the probes that check the stored embeddings
    records = read_records(src)
    for lang in LANGS:
        got = {r["id"]: r["translations"][lang]["negatives"] for r in read_records(out) if lang in r["translations"]}
        assert got == brute_force(records, lang, 2, 4, 9, np.inf), lang


def test_rows_take_their_passage_languages_negatives_in_mono_and_cross_batches(tmp_path, caplog):
    from hybatch.datamodule import PairDataset, missing_hard_negatives
    from hybatch.samplers import HybridBatchSampler

    src = write_parallel(tmp_path / "train.jsonl")
    out = tmp_path / "out.jsonl"
    mine(HashEncoder(), f"input={src}", f"out={out}", *FILTERS)
    corpus = read_parallel_jsonl([out])
    langs = sorted({lang for ex in corpus.examples for lang in ex.translations})
    positives = {lang: {ex.translations[lang].positive for ex in corpus.examples if lang in ex.translations} for lang in langs}
    dataset = PairDataset(corpus, num_hard_negatives=2)
    sampler = HybridBatchSampler(corpus.groups(["en", "de", "es"]), batch_size=8, alpha=0.5, seed=1)
    kinds = set()
    for batch in sampler:
        rows = [dataset[item] for item in batch]
        mono = len({(item.query_lang, item.passage_lang) for item in batch}) == 1 and batch[0].query_lang == batch[0].passage_lang
        kinds.add("mono" if mono else "cross")
        for item, row in zip(batch, rows, strict=True):
            assert mono or item.query_lang != item.passage_lang
            want = list(corpus[item.example].translations[item.passage_lang].negatives[:2])
            assert row["negatives"] == want and len(want) <= 2
            assert all(n in positives[item.passage_lang] for n in row["negatives"]), item
    assert kinds == {"mono", "cross"}
    # What a row lacks is counted (and logged by the data module), not padded.
    short = missing_hard_negatives(corpus, ["en", "de", "es"], 40)
    assert all(n == sum(lang in ex.translations for ex in corpus.examples) for lang, (n, _) in short.items())
    from hybatch.datamodule import log_missing_hard_negatives

    with caplog.at_level(logging.WARNING):
        log_missing_hard_negatives(corpus, ["en", "de"], 40, "train")
    assert "data.num_hard_negatives=40" in caplog.text and "'de': [" in caplog.text


def test_xquad_r_candidates_come_from_training_articles_only(tmp_path, xquad_r_dir):
    split = ("data.source.languages=[en,de]", "data.source.max_articles=12", "data.source.split.folds=4",
             "data.source.split.fold=1", "data.source.split.val=0.1")  # fmt: skip
    out = tmp_path / "xquad_r.train.jsonl"
    mine(HashEncoder(), "input=xquad_r_split", f"data.data_dir={xquad_r_dir}", *split, f"out={out}",
         "pool=positives_and_negatives", "num_negatives=5", "rank_range=[1,40]", "max_score_ratio=null")  # fmt: skip
    data = load_xquad_r_split(xquad_r_dir, languages=["en", "de"], max_articles=12,
                              split={"folds": 4, "fold": 1, "val": 0.1})  # fmt: skip
    report = json.loads((tmp_path / "xquad_r.train.mine.json").read_text())
    assert report["input"]["xquad_r_split"] == data.split
    train_texts = {lang: {s for ex in data.train.examples for s in (ex.translations[lang].positive, *ex.translations[lang].negatives)}
                   for lang in ("en", "de")}  # fmt: skip
    held_out = {lang: {s for c in (data.val, data.test) for ex in c.examples for s in (ex.translations[lang].positive,
                       *ex.translations[lang].negatives)} - train_texts[lang] for lang in ("en", "de")}  # fmt: skip
    mined = read_records(out)
    assert {r["id"] for r in mined} == {ex.id for ex in data.train.examples}
    assert {r["article"] for r in mined} == set(data.split["train"])
    for r in mined:
        for lang, t in r["translations"].items():
            assert t["negatives"] and set(t["negatives"]) <= train_texts[lang] and not set(t["negatives"]) & held_out[lang]
            assert t["positive"] not in t["negatives"]


    # data=xquad_r_split trains on them (data.source.negatives): same split, the mined negatives in
    # place of the paragraph's; a file mined on another split is refused by name.
    trained = load_xquad_r_split(xquad_r_dir, languages=["en", "de"], max_articles=12,
                                 split={"folds": 4, "fold": 1, "val": 0.1}, negatives=out)  # fmt: skip
    by_id = {r["id"]: r for r in mined}
    for ex in trained.train.examples:
        for lang, t in ex.translations.items():
            assert list(t.negatives) == by_id[ex.id]["translations"][lang]["negatives"]
    assert [ex.id for ex in trained.train.examples] == [ex.id for ex in data.train.examples]
    with pytest.raises(SplitConfigError, match=r"data.source.negatives=.*not training examples of this split"):
        load_xquad_r_split(xquad_r_dir, languages=["en", "de"], max_articles=12,
                           split={"folds": 4, "fold": 2, "val": 0.1}, negatives=out)  # fmt: skip


def test_settings_and_languages_are_checked_before_the_model_loads(tmp_path, monkeypatch):
    src = write_parallel(tmp_path / "train.jsonl")

    def no_model(cfg):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("hybatch.backbones.loading.load_encoder", no_model)
    for overrides, message in [
        (("rank_range=[5,2]",), "rank_range=[5, 2]"),
        (("num_negatives=20", "rank_range=[3,10]"), "fewer than num_negatives=20"),
        (("languages=[en,fr]",), "has no ['fr']"),
        (("index=annoy",), "index='annoy'"),
        (("pool=everything",), "pool='everything'"),
        ((f"out={src}",), "is the input file"),
    ]:
        with pytest.raises((ValueError, FileNotFoundError), match=message.replace("[", r"\[").replace("]", r"\]")):
            run_mining(mine_cfg(f"input={src}", f"out={tmp_path / 'o.jsonl'}", *overrides))
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        run_mining(mine_cfg(f"input={tmp_path / 'nothing.jsonl'}", f"out={tmp_path / 'o.jsonl'}"))


@pytest.mark.slow
def test_the_command_mines_with_model_tiny_and_train_py_trains_on_the_output(tmp_path, cache_dir):
    src = write_parallel(tmp_path / "train.jsonl")
    env = {**os.environ, "HYBATCH_CACHE": str(cache_dir), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "mined.jsonl"
    code, log = run_python(["mine_negatives.py", f"input={src}", f"out={out}", "num_negatives=2", "rank_range=[2,20]",
                            "max_score_ratio=0.95", "model=tiny", f"hydra.run.dir={tmp_path / 'mine-run'}"],
                           REPO, env, tmp_path / "mine.log")  # fmt: skip
    assert code == 0, log[-4000:]
    assert "searching de" in log and (tmp_path / "mined.mine.json").is_file()
    code, log = run_python(["train.py", "data=parallel_jsonl", f"data.source.train=[{out}]", "data.languages=[en,de,es]",
                            "data.num_hard_negatives=2", "data.batch_size=8", "data.num_workers=0", "data.hygiene.benchmarks={}",
                            "model=tiny", "sampler=hybrid", "trainer.max_steps=2", "callbacks.progress_bar=null",
                            f"hydra.run.dir={tmp_path / 'train-run'}"], REPO, env, tmp_path / "train.log")  # fmt: skip
    assert code == 0, log[-4000:]
    assert json.loads((tmp_path / "train-run" / "metrics.json").read_text())["train/loss"] > 0


def test_a_prepared_directory_is_mined_one_dataset_at_a_time_into_the_same_file_names(tmp_path):
    from hybatch.data.prepared_dir import load_prepared_directory

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    records = read_records(write_parallel(tmp_path / "all.jsonl"))
    shards = [prepared / "nq.shard-00000-of-00002.jsonl", prepared / "nq.shard-00001-of-00002.jsonl"]
    for path, part in zip(shards, (records[:20], records[20:]), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    toy = [{"id": f"t{i}", "translations": {"en": {"query": f"toy question {i}?", "positive": f"en: toy passage {i} {'x' * i}."}}}
           for i in range(6)]  # fmt: skip
    (prepared / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in toy), encoding="utf-8")
    (prepared / "nq.card.json").write_text('{"dataset": "nq", "source": {"license": "cc-by-sa-3.0"}}')
    out = tmp_path / "mined"
    mine(HashEncoder(), f"input={prepared}", f"out={out}", "num_negatives=2", "rank_range=[1,30]", "max_score_ratio=null")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "nq.card.json", "nq.mine.json", "nq.shard-00000-of-00002.jsonl", "nq.shard-00001-of-00002.jsonl", "toy.jsonl",
        "toy.mine.json"]  # fmt: skip
    assert (out / "nq.card.json").read_bytes() == (prepared / "nq.card.json").read_bytes()  # source and license travel
    nq = read_records(out / shards[0].name) + read_records(out / shards[1].name)
    second_half = {r["translations"]["en"]["positive"] for r in records[20:]}
    assert any(n in second_half for r in nq[:20] for n in r["translations"]["en"]["negatives"])  # the shards are one pool
    toy_texts = {r["translations"]["en"]["positive"] for r in toy}
    assert all(set(r["translations"]["en"]["negatives"]) <= toy_texts for r in read_records(out / "toy.jsonl"))
    data = load_prepared_directory(out)  # data=paper_mix reads the output directory
    assert len(data.train) == len(records) + len(toy)
    assert json.loads((out / "nq.mine.json").read_text())["input"]["files"] == [str(p) for p in shards]


def test_the_speed_benchmark_mines_the_same_passages_on_both_sides(tmp_path, cache_dir, xquad_r_dir):
    """benchmarks/mine_speed.py end to end with model=tiny: both sides timed every round, the ratio's interval."""
    env = {**os.environ, "HYBATCH_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "speed.json"
    code, log = run_python(["benchmarks/mine_speed.py", str(xquad_r_dir), "--model", "tiny", "--max-articles", "2",
                            "--rounds", "2", "--threads", "1", "--out", str(out)], REPO, env, tmp_path / "bench.log")  # fmt: skip
    assert code == 0, log[-4000:]
    result = json.loads(out.read_text())
    assert result["passages"] > 0 and result["questions"] > 0 and result["ours"]["negatives"] > 0
    assert len(result["round_seconds"]) == len(result["round_ratios"]) == 2
    low, high = result["ratio_ci95"]
    assert low <= result["ratio_geomean"] <= high
