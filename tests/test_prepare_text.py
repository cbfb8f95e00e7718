"""Data preparation, text level: sentence splitting / rejoining, quality filters with counts, the cache."""

import pytest

from hybatch.prepare.cache import TranslationCache
from hybatch.prepare.filters import TranslationFilter, max_run
from hybatch.prepare.sentences import join_sentences, split_sentences
from hybatch.prepare.sources import FileSource, SourceError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mr. Smith went to Washington. He met the U.S. Army there! Did he?",
         ["Mr. Smith went to Washington.", "He met the U.S. Army there!", "Did he?"]),
        ('He said "Yes." Then J. R. R. Tolkien left. It cost approx. five dollars.',
         ['He said "Yes."', "Then J. R. R. Tolkien left.", "It cost approx. five dollars."]),
        ("It grew 3.5 percent in 2010. Next year... it fell.", ["It grew 3.5 percent in 2010.", "Next year... it fell."]),
        ("北京是首都。上海很大！你好吗？好", ["北京是首都。", "上海很大！", "你好吗？", "好"]),
        ("यह एक वाक्य है। यह दूसरा है।", ["यह एक वाक्य है।", "यह दूसरा है।"]),
        ("هل هذا سؤال؟ نعم.", ["هل هذا سؤال؟", "نعم."]),
        ("no sentence end here", ["no sentence end here"]),
        ("", []),
    ],
)  # fmt: skip
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_rejoin_restores_the_text_with_single_spaces_and_no_spaces_in_chinese():
    text = "First one.  Second one!\nThird?"
    assert join_sentences(split_sentences(text), "en") == "First one. Second one! Third?"
    assert join_sentences(["北京是首都。", "上海很大！"], "zh") == "北京是首都。上海很大！"
    assert join_sentences(["ประโยคแรก", "ประโยคที่สอง"], "th") == "ประโยคแรก ประโยคที่สอง"


def test_max_run_counts_consecutive_ngram_repeats():
    assert max_run(["a", "b", "c"], 4) == 1
    assert max_run(list("xabababy"), 4) == 3
    assert max_run(list("哈哈哈哈哈"), 2) == 5
    assert max_run([], 3) == 0


def test_filters_reject_each_failure_and_count_it_per_language_field_and_reason():
    f = TranslationFilter()
    src = "The river flows through the old city."
    assert f.check(src, "Der Fluss fließt durch die alte Stadt.", "en", "de", "positive")
    assert not f.check(src, "   ", "en", "de", "positive")  # empty
    assert not f.check(src, src, "en", "ru", "positive")  # copied into a language of another script
    assert f.check("Berlin", "Berlin", "en", "de", "query")  # same script: identical can be right
    assert not f.check(src, "Fluss.", "en", "de", "positive")  # far too short
    assert not f.check(src, "Der Fluss " * 30, "en", "de", "positive")  # too long AND a loop: length first
    assert not f.check(src, "der Fluss der Fluss der Fluss der Fluss fließt", "en", "de", "query")  # a loop
    assert f.check("河流穿过古城。河流很长。", "河流穿过古城。河流很长。", "zh", "ja", "query") is False
    assert dict(f.counts) == {
        "de/positive/empty": 1, "ru/positive/untranslated": 1, "de/positive/length_ratio": 2,
        "de/query/repetition": 1, "ja/query/untranslated": 1,
    }  # fmt: skip


def test_length_ratio_uses_the_usual_character_ratio_of_chinese():
    f = TranslationFilter()
    src = "The river flows through the old city and past the new harbour."
    assert f.check(src, "河流流经老城，经过新港口。", "en", "zh", "positive")  # 13 chars for 62: normal for Chinese
    assert not f.check(src, "河。", "en", "zh", "positive")
    with pytest.raises(ValueError, match="filters.enabled"):
        TranslationFilter(enabled=["empty", "bogus"])


def test_cache_returns_what_was_put_keyed_by_model_and_languages(tmp_path):
    with TranslationCache(tmp_path / "c.sqlite") as cache:
        cache.put("m1", "en", "de", {"Hello.": "Hallo.", "Bye.": "Tschüss."})
        assert cache.get("m1", "en", "de", ["Hello.", "Bye.", "New."]) == {"Hello.": "Hallo.", "Bye.": "Tschüss."}
        assert cache.get("m2", "en", "de", ["Hello."]) == {}
        assert cache.get("m1", "en", "es", ["Hello."]) == {}
    with TranslationCache(tmp_path / "c.sqlite") as reopened:  # committed: another process sees it
        assert len(reopened) == 2


def test_file_source_normalises_and_counts_drops(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(
        "qid,question,answer,label\n1,What is x?,X is a letter.,1\n2,What is x?,X is a letter.,1\n3,,empty,1\n"
        "4,Why?,  spaced   out  ,1\n5,Long?," + "a" * 50 + ",1\n6,No?,not selected,0\n4,Why?,another answer,1\n",
        encoding="utf-8",
    )
    src = FileSource(path, name="d", fields={"id": "qid", "query": "question", "positive": "answer"},
                     where={"label": "1"}, max_passage_chars=40)  # fmt: skip
    examples, counts = src.examples()
    assert [(e.id, e.translations["en"].positive) for e in examples] == [
        ("1", "X is a letter."), ("4", "spaced out"), ("4-2", "another answer")
    ]  # fmt: skip
    assert {k: counts[k] for k in ("rows", "not_selected", "duplicate", "empty", "too_long", "ids_suffixed", "examples")} == {
        "rows": 7, "not_selected": 1, "duplicate": 1, "empty": 1, "too_long": 1, "ids_suffixed": 1, "examples": 3,
    }  # fmt: skip


def test_file_source_names_file_and_line_of_bad_json(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 1, "query": "q", "positive": "p"}\n{"id": 2, "query": \n', encoding="utf-8")
    with pytest.raises(SourceError, match=r"bad.jsonl:2: invalid JSON"):
        FileSource(path, fields={"query": "query", "positive": "positive"}).examples()
    with pytest.raises(SourceError, match="dataset.fields.positive"):
        FileSource(path, fields={"query": "query"})
