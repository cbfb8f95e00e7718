"""Mixtures of translated and one-language datasets (the paper's 7 translated sets + 2 English-only):
under the hybrid sampler a one-language dataset gives monolingual batches only, the cross-lingual
sampler refuses it by name, and batches come from each dataset in proportion to its size."""

import json
from collections import Counter
from functools import partial

import numpy as np
import pytest

from hybatch.data.corpus import DatasetGroup
from hybatch.data.parallel_jsonl import load_parallel_jsonl
from hybatch.datamodule import RetrievalDataModule
from hybatch.samplers import CrossLingualBatchSampler, HybridBatchSampler, SamplerConfigError

LANGS = ["ar", "zh", "en", "de", "es", "ru", "th", "tr", "hi"]


def mixture(sizes):
    """name -> (size, languages); example ids are disjoint across datasets."""
    start, out = 0, {}
    for name, (n, langs) in sizes.items():
        out[name] = DatasetGroup(list(range(start, start + n)), langs, {lang: n for lang in langs})
        start += n
    return out


def test_hybrid_one_language_dataset_batches_are_all_monolingual_and_sizes_set_the_proportions():
    groups = mixture({"nq": (3000, LANGS), "mrtydi": (1000, ["en"]), "mfaq": (500, ["en"])})
    alpha, batch, epochs = 0.5, 10, 4
    sampler = HybridBatchSampler(groups, batch_size=batch, alpha=alpha, seed=7)
    owner = {i: name for name, g in groups.items() for i in g.examples}
    per_dataset, kinds = Counter(), Counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for b in sampler:
            names = {owner[i.example] for i in b}
            assert len(names) == 1  # every batch from one dataset
            name = names.pop()
            per_dataset[name] += 1
            pairs = {(i.query_lang, i.passage_lang) for i in b}
            mono = len(pairs) == 1 and next(iter(pairs))[0] == next(iter(pairs))[1]
            if name != "nq":
                assert pairs == {("en", "en")}  # EVERY batch of a one-language dataset: monolingual English
            else:
                assert mono or all(q != p for q, p in pairs)  # mono, or cross for every pair
                kinds["mono" if mono else "cross"] += 1
            assert max(Counter(i.example for i in b).values()) == 1
    # In proportion to size: all of each dataset's full batches, every epoch.
    assert per_dataset == {"nq": 300 * epochs, "mrtydi": 100 * epochs, "mfaq": 50 * epochs}
    # The translated dataset keeps the alpha mixture: mono fraction within 4 binomial standard deviations.
    n = kinds["mono"] + kinds["cross"]
    assert abs(kinds["mono"] / n - alpha) <= 4 * np.sqrt(alpha * (1 - alpha) / n)


def test_dataset_weights_proportions_within_binomial_tolerance_with_one_language_datasets():
    groups = mixture({"nq": (2000, LANGS), "mfaq": (2000, ["en"])})
    sampler = HybridBatchSampler(groups, batch_size=8, alpha=0.3, seed=1, dataset_weights={"nq": 0.8, "mfaq": 0.2})
    owner = {i: name for name, g in groups.items() for i in g.examples}
    counts, n = Counter(), 0
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for b in sampler:
            name = owner[b[0].example]
            counts[name] += 1
            n += 1
            if name == "mfaq":
                assert {(i.query_lang, i.passage_lang) for i in b} == {("en", "en")}
    assert abs(counts["nq"] / n - 0.8) <= 4 * np.sqrt(0.8 * 0.2 / n)


def test_hybrid_alpha_one_and_zero_with_a_one_language_dataset():
    groups = mixture({"nq": (200, LANGS), "mfaq": (100, ["en"])})
    mono_only = HybridBatchSampler(groups, batch_size=10, alpha=1.0)
    assert all(len({(i.query_lang, i.passage_lang) for i in b}) == 1 for b in mono_only)
    with pytest.raises(SamplerConfigError, match=r"dataset 'mfaq' has only the language \['en'\]; leave it out of data.source.train"):
        HybridBatchSampler(groups, batch_size=10, alpha=0.0)  # never draws a monolingual batch


def test_cross_sampler_refuses_a_one_language_dataset_naming_it_and_the_options():
    groups = mixture({"nq": (200, LANGS), "mrtydi": (100, ["en"])})
    with pytest.raises(SamplerConfigError) as err:
        CrossLingualBatchSampler(groups, batch_size=10)
    message = str(err.value)
    assert "'mrtydi'" in message and "data.source.train" in message and "sampler=hybrid" in message


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_datamodule_mixes_a_translated_and_an_english_only_file(tmp_path):
    translated = write(tmp_path / "nq.jsonl", [
        {"id": f"q{i}", "translations": {lang: {"query": f"q{i} {lang}", "positive": f"p{i} {lang}"} for lang in ("en", "de", "es")}}
        for i in range(40)
    ])  # fmt: skip
    english = write(tmp_path / "mfaq.jsonl", [{"id": f"f{i}", "translations": {"en": {"query": f"f{i}", "positive": f"a{i}"}}} for i in range(20)])

    def module(sampler):
        return RetrievalDataModule(
            source=partial(load_parallel_jsonl, train=[str(translated), str(english)]),
            sampler=sampler, languages=["en", "de", "es"], batch_size=4,
        )  # fmt: skip

    sampler = module(partial(HybridBatchSampler, alpha=0.5)).make_sampler("train")
    assert sampler.groups["mfaq"].languages == ["en"] and sampler.groups["nq"].languages == ["en", "de", "es"]
    plans = list(sampler.plan(0))
    assert Counter(p.dataset for p in plans) == {"nq": 10, "mfaq": 5}
    assert all(p.kind == "mono" and p.items[0].query_lang == "en" for p in plans if p.dataset == "mfaq")
    with pytest.raises(SamplerConfigError, match="'mfaq'"):
        module(partial(CrossLingualBatchSampler)).check()


def test_paper_mix_reads_every_prepared_file_and_shard_of_a_directory(tmp_path):
    from hybatch.data.parallel_jsonl import JsonlFormatError
    from hybatch.data.prepared_dir import load_prepared_directory

    def rows(prefix, n):
        return [{"id": f"{prefix}{i}", "translations": {"en": {"query": f"{prefix}q{i}", "positive": f"p{i}"}}} for i in range(n)]

    write(tmp_path / "nq.shard-00000-of-00002.jsonl", rows("a", 3))
    write(tmp_path / "nq.shard-00001-of-00002.jsonl", rows("b", 2))
    write(tmp_path / "mfaq.jsonl", rows("f", 4))
    (tmp_path / ".nq.jsonl.0123.tmp").write_text("half a line", encoding="utf-8")  # an unfinished run's file
    data = load_prepared_directory(tmp_path)
    assert Counter(ex.dataset for ex in data.train.examples) == {"nq": 5, "mfaq": 4}
    assert Counter(ex.dataset for ex in load_prepared_directory(tmp_path, datasets=["mfaq"]).train.examples) == {"mfaq": 4}
    with pytest.raises(JsonlFormatError, match=r"data.source.datasets has \['wikiqa'\]"):
        load_prepared_directory(tmp_path, datasets=["wikiqa"])
