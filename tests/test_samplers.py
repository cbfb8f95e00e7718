"""Batch samplers: the composition of every batch, determinism, resumption and rank agreement."""

from collections import Counter

import numpy as np
import pytest

from hybatch.allocation import cross_shares
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
def test_bernoulli_mono_fraction_within_binomial_tolerance(alpha):
    sampler = HybridBatchSampler(groups(), batch_size=4, alpha=alpha, seed=11, schedule="bernoulli")
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


@pytest.mark.parametrize("schedule", ["balanced", "bernoulli"])
@pytest.mark.parametrize("pair_mode", ["example", "batch"])
def test_hybrid_extremes_reproduce_mono_and_cross_exactly(schedule, pair_mode):
    kw = dict(batch_size=8, seed=5, schedule=schedule, pair_mode=pair_mode)
    for alpha, cls in ((1.0, MonolingualBatchSampler), (0.0, CrossLingualBatchSampler)):
        hybrid = all_batches(HybridBatchSampler(groups(), alpha=alpha, **kw), epochs=2)
        pure = all_batches(cls(groups(), **kw), epochs=2)
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
    # The global batches of one process, built through the hybrid sampler at the class's alpha.
    alpha = {MonolingualBatchSampler: 1.0, CrossLingualBatchSampler: 0.0, HybridBatchSampler: 0.5}[cls]
    single = HybridBatchSampler(groups(), batch_size=4 * world_size, seed=9, alpha=alpha)
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


@pytest.mark.parametrize("schedule, tolerance", [("balanced", 1 / 1000), ("bernoulli", 0.04)])
def test_language_weighting_by_size_and_temperature(schedule, tolerance):
    counts = {"en": 900, "de": 100}
    data = {"qa": DatasetGroup(list(range(1000)), ["en", "de"], counts)}
    kw = dict(seed=0, schedule=schedule)
    by_size = Counter(b[0].query_lang for b in all_batches(MonolingualBatchSampler(data, 1, language_weighting="size", **kw)))
    assert abs(by_size["en"] / 1000 - 0.9) <= tolerance
    flat = MonolingualBatchSampler(data, 1, language_weighting="temperature", language_temperature=100.0, **kw)
    flat_counts = Counter(b[0].query_lang for b in all_batches(flat))
    assert abs(flat_counts["en"] / 1000 - 0.5) <= tolerance + 0.02  # T=100 leaves en at 0.511


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
        (lambda: HybridBatchSampler(groups(), 8, schedule="round_robin"), "sampler.schedule"),
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


# --- the balanced schedule: every batch checked at the run lengths users run ----------------------


def check_balanced(sampler, epochs, share_tolerance=1.0):
    """Asserts the balanced schedule's guarantees on every batch of `epochs` epochs; returns the
    realized counts. Mono batches: round(alpha x batches so far) at every epoch's end, each language
    within one batch of its share. Cross rows (or batches with pair_mode=batch): at every prefix,
    each query and passage language within `share_tolerance` of its share; never q = p."""
    (name, group), = sampler.groups.items()
    n = len(group.languages)
    weights = sampler._weights[name]
    q_share, p_share = cross_shares(weights) if n > 1 else (weights, weights)
    batches_seen, mono, cross_units = 0, Counter(), 0
    q_counts, p_counts = Counter(), Counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        ids_this_epoch = []
        for batch in sampler:
            batches_seen += 1
            ids = [i.example for i in batch]
            assert len(ids) == len(set(ids)), "an id twice in one batch"
            ids_this_epoch += ids
            same = {i.query_lang == i.passage_lang for i in batch}
            assert len(same) == 1, "a batch mixes mono and cross pairs"
            if same == {True}:
                langs = {i.query_lang for i in batch}
                assert len(langs) == 1
                mono[langs.pop()] += 1
                continue
            units = [batch[0]] if sampler.pair_mode == "batch" else batch
            if sampler.pair_mode == "batch":
                assert len({(i.query_lang, i.passage_lang) for i in batch}) == 1
            for item in units:
                cross_units += 1
                q_counts[item.query_lang] += 1
                p_counts[item.passage_lang] += 1
                for lang, w_q, w_p in zip(group.languages, q_share, p_share):
                    assert abs(q_counts[lang] - w_q * cross_units) <= share_tolerance + 1e-9, (lang, cross_units)
                    assert abs(p_counts[lang] - w_p * cross_units) <= share_tolerance + 1e-9, (lang, cross_units)
        assert len(ids_this_epoch) == len(set(ids_this_epoch)), "an id twice in one epoch"
        total_mono = sum(mono.values())
        expected = batches_seen if n < 2 else int(np.floor(sampler.alpha * batches_seen + 0.5))
        assert total_mono == expected, (epoch, total_mono, sampler.alpha * batches_seen)
        for lang, w in zip(group.languages, weights):
            assert abs(mono[lang] - w * total_mono) <= 1 + 1e-9, (epoch, lang, mono[lang], w * total_mono)
    return {"batches": batches_seen, "mono": mono, "query": q_counts, "passage": p_counts}


@pytest.mark.parametrize("run_length", [1, 7, 26, 101])
@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("langs", [LANGS, ["en", "de"], ["en", "de", "zh"]], ids=["9langs", "2langs", "3langs"])
def test_balanced_schedule_every_batch_at_user_run_lengths(run_length, alpha, langs):
    batch_size = 4
    data = groups({"qa": run_length * batch_size + 3}, langs=langs)  # + 3: a left-over every epoch
    sampler = HybridBatchSampler(data, batch_size=batch_size, alpha=alpha, seed=run_length)
    counts = check_balanced(sampler, epochs=4)
    assert counts["batches"] == 4 * run_length


@pytest.mark.parametrize("alpha", [0.25, 0.5])
def test_balanced_pair_mode_batch_within_one_batch(alpha):
    sampler = HybridBatchSampler(groups(), batch_size=10, alpha=alpha, seed=3, pair_mode="batch")
    check_balanced(sampler, epochs=3)


def test_balanced_schedule_with_size_weights():
    """Unequal language weights: mono batches within one batch of their shares; cross rows within
    1.5 rows (the greedy pair choice does not guarantee one, see hybatch.allocation)."""
    langs = ["en", "de", "zh", "hi"]
    counts = {"en": 500, "de": 250, "zh": 150, "hi": 100}
    data = {"qa": DatasetGroup(list(range(500)), langs, counts)}
    sampler = HybridBatchSampler(data, batch_size=5, alpha=0.5, seed=2, language_weighting="size")
    check_balanced(sampler, epochs=3, share_tolerance=1.5)


def test_balanced_hybrid_of_26_batches_has_13_monolingual_whatever_the_seed():
    for seed in range(6):
        sampler = HybridBatchSampler(groups({"qa": 26 * 32}), batch_size=32, alpha=0.5, seed=seed)
        kinds = Counter(b.kind for b in sampler.plan(0))
        assert kinds == {"mono": 13, "cross": 13}


def test_balanced_remainder_carries_into_the_next_epoch():
    sampler = HybridBatchSampler(groups({"qa": 7 * 4}), batch_size=4, alpha=0.5, seed=0)
    per_epoch = [sum(b.kind == "mono" for b in sampler.plan(e)) for e in range(4)]
    assert per_epoch == [4, 3, 4, 3]  # round(3.5)=4, round(7)-4=3, round(10.5)-7=4, 14-11=3


def test_balanced_mono_positions_differ_between_epochs_and_seeds():
    def kinds(seed, epoch):
        return [b.kind for b in HybridBatchSampler(groups(), batch_size=8, seed=seed).plan(epoch)]

    assert kinds(0, 0) != kinds(0, 1)
    assert kinds(0, 0) != kinds(1, 0)


def test_balanced_uniform_cross_rows_cover_every_ordered_pair_equally():
    n = len(LANGS)
    sampler = CrossLingualBatchSampler(groups({"qa": n * (n - 1) * 4}), batch_size=n * (n - 1), seed=1)
    pairs = Counter((i.query_lang, i.passage_lang) for b in all_batches(sampler) for i in b)
    assert set(pairs.values()) == {4} and len(pairs) == n * (n - 1)


@pytest.mark.parametrize("world_size", [2, 3])
def test_balanced_ranks_agree_and_resume_mid_epoch(world_size):
    data = groups({"qa": 26 * 4 * world_size})
    samplers = [HybridBatchSampler(data, batch_size=4, seed=7, world_size=world_size, rank=r) for r in range(world_size)]
    stats = describe(samplers, 26 * 3)
    assert stats["ranks_agree"] and stats["mono_fraction"] == 0.5
    full = HybridBatchSampler(data, batch_size=4, seed=7)
    full.set_epoch(1)
    expected = list(full)
    interrupted = HybridBatchSampler(data, batch_size=4, seed=7)
    interrupted.set_epoch(1)
    it = iter(interrupted)
    seen = [next(it) for _ in range(11)]
    resumed = HybridBatchSampler(data, batch_size=4, seed=7)  # a new process: no cached sequences
    resumed.load_state_dict(interrupted.state_dict())
    assert seen + list(resumed) == expected


def test_balanced_dataset_weights_keep_per_dataset_fractions():
    data = groups({"big": 3000, "small": 1000})
    sampler = HybridBatchSampler(data, batch_size=10, alpha=0.25, seed=0, dataset_weights={"big": 1, "small": 1})
    owner = {i: name for name, g in data.items() for i in g.examples}
    batches, mono = Counter(), Counter()
    for epoch in range(3):
        for b in sampler.plan(epoch):
            name = owner[b.items[0].example]
            batches[name] += 1
            mono[name] += b.kind == "mono"
        for name in data:
            assert mono[name] == int(np.floor(0.25 * batches[name] + 0.5))
