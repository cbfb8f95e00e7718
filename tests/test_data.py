"""Training data: the XQuAD-R article split, parallel JSONL, corpus groups and data hygiene."""

import json
import logging
from pathlib import Path

import pytest

from hybatch import downloads
from hybatch.data.corpus import ParallelCorpus, ParallelExample, Translation
from hybatch.data.hygiene import BenchmarkHygiene, ContaminationError, HeldOut, filter_corpus, lareqa_held_out
from hybatch.data.parallel_jsonl import JsonlFormatError, load_parallel_jsonl, read_parallel_jsonl
from hybatch.data.training_data import TrainingData
from hybatch.data.xquad_r_split import SplitConfigError, load_xquad_r_split, split_articles

ARTICLES = [f"Article_{i}" for i in range(20)]


def record(id_, langs=("en", "de"), **extra):
    return {"id": id_, "translations": {lang: {"query": f"q {id_} {lang}", "positive": f"p {id_} {lang}"} for lang in langs}, **extra}


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# --- XQuAD-R article split ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_fraction_split_puts_every_article_in_exactly_one_split(seed):
    parts = split_articles(ARTICLES, {"train": 0.8, "val": 0.1, "test": 0.1}, seed)
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == sorted(ARTICLES)
    assert (len(parts["train"]), len(parts["val"]), len(parts["test"])) == (16, 2, 2)


def test_fraction_split_is_seeded():
    split = {"train": 0.6, "val": 0.2, "test": 0.2}
    assert split_articles(ARTICLES, split, 3) == split_articles(ARTICLES, split, 3)
    assert split_articles(ARTICLES, split, 3) != split_articles(ARTICLES, split, 4)


def test_title_lists_send_unlisted_articles_to_train():
    parts = split_articles(ARTICLES, {"val": ["Article_3"], "test": ["Article_5", "Article_9"]}, 0)
    assert parts["val"] == ["Article_3"] and parts["test"] == ["Article_5", "Article_9"]
    assert set(parts["train"]) == set(ARTICLES) - {"Article_3", "Article_5", "Article_9"}


@pytest.mark.parametrize(
    "split, message",
    [
        ({"train": 0.5, "val": 0.6, "test": 0.1}, "sum to 1"),
        ({"train": 0.0, "val": 0.5, "test": 0.5}, "leaves no training article"),
        ({"train": 0.8, "val": ["Article_1"], "test": 0.1}, "not a mix"),
        ({"val": ["Article_1"], "test": ["Article_1"]}, "in both split"),
        ({"val": ["No_such_article"]}, "unknown articles ['No_such_article']"),
        ({"train": 0.8, "dev": 0.2}, "keys ['dev']"),
    ],
)
def test_bad_split_configs_are_refused(split, message):
    with pytest.raises(SplitConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        split_articles(ARTICLES, split, 0)


def test_xquad_r_split_shares_no_article_or_question_between_splits(xquad_r_dir):
    data = load_xquad_r_split(xquad_r_dir, languages=["en", "de"], max_articles=10, split_seed=2)
    articles = {s: {ex.article for ex in getattr(data, s).examples} for s in ("train", "val", "test")}
    ids = {s: {ex.id for ex in getattr(data, s).examples} for s in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not articles[a] & articles[b] and not ids[a] & ids[b]
    assert len(articles["train"] | articles["val"] | articles["test"]) == 10
    assert {q.article for q in data.test_benchmark.questions} == articles["test"]
    assert {q.article for q in data.val_benchmark.questions} == articles["val"]


def test_xquad_r_split_refuses_an_unknown_language(xquad_r_dir):
    with pytest.raises(SplitConfigError, match=r"no language \['xx'\]"):
        load_xquad_r_split(languages=["en", "xx"])
    with pytest.raises(downloads.DataSourceError, match=r"data.data_dir=.* lacks \['xx.json'\]"):
        load_xquad_r_split(xquad_r_dir, languages=["en", "xx"])


# --- parallel JSONL -------------------------------------------------------------------------------
def test_parallel_jsonl_reads_the_schema(tmp_path):
    path = write_jsonl(
        tmp_path / "nq.train.jsonl",
        [
            {**record("a1"), "article": "Some title"},
            {"id": 7, "dataset": "other", "translations": {"en": {"query": "q", "positive": "p", "negatives": ["n1", "n2"]}}},
        ],
    )
    corpus = read_parallel_jsonl([path])
    first, second = corpus.examples
    assert (first.id, first.dataset, first.article, first.origin) == ("a1", "nq", "Some title", f"{path}:1")
    assert first.translations["de"] == Translation("q a1 de", "p a1 de")
    assert (second.id, second.dataset, second.translations["en"].negatives) == ("7", "other", ("n1", "n2"))


def test_parallel_jsonl_paths_relative_to_data_dir_and_single_strings(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [record("a"), record("b")])
    write_jsonl(tmp_path / "val.jsonl", [record("c")])
    data = load_parallel_jsonl(train="train.jsonl", val=["val.jsonl"], data_dir=tmp_path)
    assert [ex.id for ex in data.train.examples] == ["a", "b"]
    assert [ex.id for ex in data.val.examples] == ["c"] and data.test is None


def test_parallel_jsonl_urls_are_downloaded_once_into_separate_cache_folders(tmp_path, monkeypatch):
    """Two URLs with the same file name never share a cache entry; a cached file is not fetched again."""
    fetched = []

    def fake_download(url, dest):
        fetched.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(dest, [record("nq-1" if "/nq/" in url else "duorc-1")])
        return dest

    monkeypatch.setattr(downloads, "download", fake_download)
    urls = ["https://example.org/nq/train.jsonl", "https://example.org/duorc/train.jsonl"]
    data = load_parallel_jsonl(train=urls, cache_dir=tmp_path / "cache")
    assert [ex.id for ex in data.train.examples] == ["nq-1", "duorc-1"]
    load_parallel_jsonl(train=urls, cache_dir=tmp_path / "cache")
    assert fetched == urls


def test_parallel_jsonl_refuses_duplicate_ids_naming_both_lines(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [record("x"), record("y"), record("x")])
    with pytest.raises(JsonlFormatError, match=rf"{path}:3: id 'x' of dataset 'qa' already at {path}:1"):
        read_parallel_jsonl([path])


# --- corpus groups ----------------------------------------------------------------------------
def test_groups_leave_out_examples_missing_a_language_with_a_logged_count(caplog):
    examples = [
        ParallelExample(str(i), "qa", {lang: Translation("q", "p") for lang in (("en", "de") if i % 4 else ("en",))})
        for i in range(20)
    ]
    with caplog.at_level(logging.WARNING, logger="hybatch.data.corpus"):
        groups = ParallelCorpus(examples).groups(["en", "de"])
    assert groups["qa"].languages == ["en", "de"]
    assert len(groups["qa"].examples) == 15 and all(i % 4 for i in groups["qa"].examples)
    assert "5 of 20 examples lack one of its languages" in caplog.text


# --- data hygiene -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def xquad_r_held_out(xquad_r_dir):
    return lareqa_held_out("xquad_r", data_dir=xquad_r_dir)


def test_xquad_r_held_out_has_its_question_ids_and_titles(xquad_r_held_out):
    assert len(xquad_r_held_out.ids) == 1190 and len(xquad_r_held_out.articles) == 48
    assert "super bowl 50" in xquad_r_held_out.articles


def test_hygiene_refuses_training_examples_from_the_benchmark_naming_file_and_line(tmp_path, xquad_r_dir):
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [record("clean-1"), record("56beb4343aeaaa14008c925b"), record("clean-2", article="super bowl 50")],
    )
    data = load_parallel_jsonl(train=[path])
    hygiene = BenchmarkHygiene({"xquad_r": str(xquad_r_dir)})
    with pytest.raises(ContaminationError) as err:
        hygiene(data)
    assert "2 of 3 train examples appear in evaluation data" in str(err.value)
    assert f"{path}:2: example '56beb4343aeaaa14008c925b': id '56beb4343aeaaa14008c925b' is in the xquad_r data" in str(err.value)
    assert f"{path}:3: example 'clean-2': article 'super bowl 50' is an article of the xquad_r data" in str(err.value)


def test_hygiene_drops_when_configured_and_logs_the_count(tmp_path, xquad_r_held_out, caplog):
    corpus = ParallelCorpus([
        ParallelExample("a", "qa", {"en": Translation("q", "p")}, article="Amazon rainforest"),
        ParallelExample("b", "qa", {"en": Translation("q", "p")}, article="Elsewhere"),
    ])
    with caplog.at_level(logging.WARNING, logger="hybatch.data.hygiene"):
        kept = filter_corpus(corpus, [xquad_r_held_out], "train", "drop")
    assert [ex.id for ex in kept.examples] == ["b"]
    assert "dropped 1 of 2 train examples" in caplog.text


def test_hygiene_checks_the_runs_own_splits_by_dataset_and_id():
    def corpus(*items):
        return ParallelCorpus([ParallelExample(i, d, {"en": Translation("q", "p")}, article=a) for i, d, a in items])

    data = TrainingData(
        train=corpus(("1", "nq", None), ("1", "duorc", None), ("2", "nq", "Shared_title")),
        val=corpus(("9", "nq", None)),
        test=corpus(("1", "duorc", None), ("3", "nq", "shared title")),
    )
    with pytest.raises(ContaminationError, match="2 of 3 train examples") as err:
        BenchmarkHygiene()(data)
    assert "dataset 'duorc': example '1': id '1' is in the test split data" in str(err.value)
    assert "article 'Shared_title' is an article of the test split data" in str(err.value)
    kept = BenchmarkHygiene(on_overlap="drop")(data)
    assert [(ex.dataset, ex.id) for ex in kept.train.examples] == [("nq", "1")]


def test_hygiene_config_errors():
    with pytest.raises(ValueError, match="on_overlap='ignore'"):
        BenchmarkHygiene(on_overlap="ignore")
    with pytest.raises(ContaminationError, match="known benchmarks"):
        lareqa_held_out("squad")
    assert HeldOut("x").reason(ParallelExample("1", "qa", {})) is None


def test_any_folder_in_the_lareqa_format_splits_in_its_own_languages(tmp_path, xquad_r_dir):
    """Not only XQuAD-R: a folder of <lang>.json files in its format, in languages XQuAD-R lacks."""
    import shutil

    folder = tmp_path / "other"
    folder.mkdir()
    for ours, theirs in (("en", "en"), ("de", "fr"), ("es", "pt-BR")):
        shutil.copy(xquad_r_dir / f"{ours}.json", folder / f"{theirs}.json")
    data = load_xquad_r_split(folder, max_articles=10)
    assert sorted(data.train.languages()) == ["en", "fr", "pt-BR"]
    assert sorted(data.test_benchmark.languages) == ["en", "fr", "pt-BR"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(downloads.DataSourceError, match=r"data.data_dir=.*no <language>.json file"):
        load_xquad_r_split(tmp_path / "empty")
    with pytest.raises(SplitConfigError, match="XQuAD-R has no language"):
        load_xquad_r_split(languages=["en", "fr"])  # the pinned download has only XQuAD-R's 11
