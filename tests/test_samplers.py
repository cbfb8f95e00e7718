"""Batch samplers: the composition of every batch, determinism, resumption and rank agreement."""

from collections import Counter

import numpy as np
import pytest

from hybatch.describe_batches import describe
from hybatch.samplers import (
    CrossLingualBatchSampler,
    DatasetGroup,
    HybridBatchSampler,
    MonolingualBatchSampler,
    SamplerConfigError,
)

LANGS = ["ar", "zh", "en", "de", "es", "ru", "th", "tr", "hi"]


def groups(sizes=None, langs=LANGS):
    sizes = sizes or {"qa": 1000}
    start, out = 0, {}
    for name, n in sizes.items():
        out[name] = DatasetGroup(list(range(start, start + n)), langs, {lang: n for lang in langs})
        start += n
    return out


def all_batches(sampler, epochs=1):
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out += list(sampler)
    return out


def test_mono_batches_are_single_language_and_use_every_id_once_per_epoch():
    sampler = MonolingualBatchSampler(groups(), batch_size=8, seed=3)
    batches = all_batches(sampler)
    assert len(batches) == len(sampler) == 1000 // 8
    for batch in batches:
        assert len(batch) == 8
        assert len({(i.query_lang, i.passage_lang) for i in batch}) == 1
        assert batch[0].query_lang == batch[0].passage_lang
    ids = [i.example for b in batches for i in b]
    assert len(ids) == len(set(ids)) == 1000  # 1000 % 8 == 0: every id exactly once


def test_cross_batches_never_pair_a_language_with_itself():
    sampler = CrossLingualBatchSampler(groups(), batch_size=10, seed=0)
    batches = all_batches(sampler, epochs=10)
    assert len(batches) >= 1000
    pairs = Counter()
    for batch in batches:
        assert all(i.query_lang != i.passage_lang for i in batch)
        assert max(Counter(i.example for i in batch).values()) == 1
        pairs.update((i.query_lang, i.passage_lang) for i in batch)
    assert len(pairs) == len(LANGS) * (len(LANGS) - 1)  # every ordered pair occurs


def test_cross_pair_mode_batch_uses_one_pair_per_batch():
    sampler = CrossLingualBatchSampler(groups(), batch_size=10, seed=0, pair_mode="batch")
    for batch in all_batches(sampler):
        assert len({(i.query_lang, i.passage_lang) for i in batch}) == 1
        assert batch[0].query_lang != batch[0].passage_lang


@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.8])
def test_hybrid_mono_fraction_within_binomial_tolerance(alpha):
    sampler = HybridBatchSampler(groups(), batch_size=4, alpha=alpha, seed=11)
    batches = all_batches(sampler, epochs=5)
    n = len(batches)
    assert n >= 1000
    mono = 0
    for batch in batches:
        same = [i.query_lang == i.passage_lang for i in batch]
        assert all(same) or not any(same), "a batch mixes mono and cross pairs"
        if all(same):
            assert len({i.query_lang for i in batch}) == 1
            mono += 1
        assert max(Counter(i.example for i in batch).values()) == 1
    tolerance = 4 * np.sqrt(alpha * (1 - alpha) / n)
    assert abs(mono / n - alpha) < tolerance


def test_hybrid_extremes_reproduce_mono_and_cross_exactly():
    for alpha, cls in ((1.0, MonolingualBatchSampler), (0.0, CrossLingualBatchSampler)):
        hybrid = all_batches(HybridBatchSampler(groups(), batch_size=8, alpha=alpha, seed=5), epochs=2)
        pure = all_batches(cls(groups(), batch_size=8, seed=5), epochs=2)
        assert hybrid == pure


def test_deterministic_per_seed_and_epoch():
    a = all_batches(HybridBatchSampler(groups(), batch_size=8, seed=1), epochs=2)
    b = all_batches(HybridBatchSampler(groups(), batch_size=8, seed=1), epochs=2)
    c = all_batches(HybridBatchSampler(groups(), batch_size=8, seed=2), epochs=2)
    assert a == b
    assert a != c
    assert a[: len(a) // 2] != a[len(a) // 2 :]  # epochs differ


def test_resume_mid_epoch_from_state_dict():
    full = HybridBatchSampler(groups(), batch_size=8, seed=4)
    full.set_epoch(2)
    expected = list(full)
    interrupted = HybridBatchSampler(groups(), batch_size=8, seed=4)
    interrupted.set_epoch(2)
    it = iter(interrupted)
    seen = [next(it) for _ in range(37)]
    state = interrupted.state_dict()
    resumed = HybridBatchSampler(groups(), batch_size=8, seed=4)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # Lightning announces the same epoch again: the position is kept
    assert seen + list(resumed) == expected
    resumed.set_epoch(3)
    full.set_epoch(3)
    assert list(resumed) == list(full)  # and the next epoch starts from its beginning


def test_resume_refuses_a_different_global_batch():
    state = HybridBatchSampler(groups(), batch_size=8, seed=4).state_dict()
    with pytest.raises(SamplerConfigError, match="global_batch_size"):
        HybridBatchSampler(groups(), batch_size=16, seed=4).load_state_dict(state)


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("cls", [MonolingualBatchSampler, CrossLingualBatchSampler, HybridBatchSampler])
def test_ranks_agree_and_slices_form_the_global_batch(world_size, cls):
    samplers = [cls(groups(), batch_size=4, seed=9, world_size=world_size, rank=r) for r in range(world_size)]
    assert len({len(s) for s in samplers}) == 1
    per_rank = [all_batches(s, epochs=2) for s in samplers]
    assert len({len(b) for b in per_rank}) == 1
    reference = HybridBatchSampler if cls is HybridBatchSampler else cls
    single = reference(groups(), batch_size=4 * world_size, seed=9)
    global_batches = all_batches(single, epochs=2)
    for step, slices in enumerate(zip(*per_rank)):
        assert [i for s in slices for i in s] == global_batches[step]
        kinds = {"mono" if s[0].query_lang == s[0].passage_lang else "cross" for s in slices}
        assert len(kinds) == 1
        if kinds == {"mono"}:
            assert len({s[0].query_lang for s in slices}) == 1
    stats = describe(samplers, 1000)
    assert stats["ranks_agree"] and stats["max_repeated_id_in_batch"] == 1


def test_datasets_are_drawn_in_proportion_to_their_size_one_per_batch():
    data = groups({"big": 3000, "small": 1000})
    sampler = HybridBatchSampler(data, batch_size=10, seed=0)
    owner = {i: name for name, g in data.items() for i in g.examples}
    counts = Counter()
    for batch in all_batches(sampler):
        names = {owner[i.example] for i in batch}
        assert len(names) == 1
        counts[names.pop()] += 1
    assert counts == {"big": 300, "small": 100}


def test_dataset_weights_override_sizes_without_repeating_ids_in_a_batch():
    data = groups({"big": 3000, "small": 1000})
    sampler = HybridBatchSampler(data, batch_size=10, seed=0, dataset_weights={"big": 1, "small": 1})
    owner = {i: name for name, g in data.items() for i in g.examples}
    counts = Counter()
    for batch in all_batches(sampler, epochs=3):
        assert max(Counter(i.example for i in batch).values()) == 1
        counts[owner[batch[0].example]] += 1
    assert abs(counts["big"] / sum(counts.values()) - 0.5) < 0.05


def test_language_weighting_by_size_and_temperature():
    counts = {"en": 900, "de": 100}
    data = {"qa": DatasetGroup(list(range(1000)), ["en", "de"], counts)}
    by_size = Counter(b[0].query_lang for b in all_batches(MonolingualBatchSampler(data, 1, seed=0, language_weighting="size")))
    assert abs(by_size["en"] / 1000 - 0.9) < 0.04
    flat = Counter(b[0].query_lang for b in all_batches(MonolingualBatchSampler(data, 1, seed=0, language_weighting="temperature", language_temperature=100.0)))
    assert abs(flat["en"] / 1000 - 0.5) < 0.06


def test_incomplete_last_batch_is_left_out_on_every_rank_alike():
    sampler = HybridBatchSampler(groups({"qa": 1005}), batch_size=10, seed=0)
    batches = all_batches(sampler)
    assert len(batches) == 100 and all(len(b) == 10 for b in batches)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: HybridBatchSampler(groups(), 8, alpha=1.5), "alpha"),
        (lambda: HybridBatchSampler(groups(), 8, alpha=-0.1), "alpha"),
        (lambda: CrossLingualBatchSampler(groups(langs=["en"]), 8), "leave it out of data.source.train"),
        (lambda: HybridBatchSampler(groups(langs=["en"]), 8, alpha=0.0), "leave it out of data.source.train"),
        (lambda: MonolingualBatchSampler(groups({"qa": 5}), 8), "fewer than one global batch"),
        (lambda: MonolingualBatchSampler(groups({"qa": 10}), 4, world_size=4, rank=0), "fewer than one global batch"),
        (lambda: MonolingualBatchSampler(groups(), 8, pair_mode="random"), "pair_mode"),
        (lambda: MonolingualBatchSampler(groups(), 8, language_weighting="zipf"), "language_weighting"),
        (lambda: MonolingualBatchSampler(groups(), 8, dataset_weights={"other": 1}), "dataset_weights"),
    ],
)
def test_bad_configurations_are_refused_clearly(make, message):
    with pytest.raises(SamplerConfigError, match=message):
        make()


def test_monolingual_sampler_accepts_a_single_language():
    sampler = MonolingualBatchSampler(groups(langs=["en"]), 8)
    assert {i.query_lang for b in all_batches(sampler) for i in b} == {"en"}
