"""Intervals and paired differences of the sweep report (hybatch.report.uncertainty), on synthetic
per-query files of 3 samplers x 3 folds, the LAReQA averages they must reproduce, and scipy's bootstrap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import random_benchmark
from omegaconf import OmegaConf
from scipy import stats

from hybatch.evaluation.lareqa_scoring import score_lareqa
from hybatch.report import uncertainty as U
from hybatch.report.sweep import write_report

LANGS = ("en", "de", "ar")
ARTICLES = [f"article{a}" for a in range(12)]
FOLDS = 3


def synthetic_rows(shift: float, article_effects: np.ndarray, noise_seed: int, articles: list[str]) -> list[dict]:
    """4 questions per article in every language: mono, cross and multi rows; AP = article effect +
    question noise + `shift` (clipped to [0, 1]); rank distance falls as AP rises."""
    rng = np.random.default_rng(noise_seed)
    rows = []
    for article in articles:
        a = ARTICLES.index(article)
        for k in range(4):
            qid = f"{article}-q{k}"
            for lang in LANGS:
                base = float(np.clip(article_effects[a] + rng.normal(0, 0.05) + shift, 0, 1))
                head = {"benchmark": "xquad_r_test", "qid": qid, "lang": lang, "article": article}
                for clang in LANGS:
                    setting = "mono" if clang == lang else "cross"
                    rows.append({**head, "setting": setting, "candidate_lang": clang, "AP": base, "R@1": float(base > 0.5)})
                rows.append({**head, "setting": "multi", "candidate_lang": "all", "AP": base - 0.1, "R@10": 1.0,
                             "rank_distance": 40 * (1 - base)})
    return rows


def fold_articles(fold: int) -> list[str]:
    return [a for i, a in enumerate(ARTICLES) if i % FOLDS == fold]


def sampler_runs(name: str, shift: float, noise_seed: int, seeds=(1,)) -> list[U.RunRows]:
    effects = np.random.default_rng(0).uniform(0.3, 0.8, len(ARTICLES))
    return [
        U.RunRows(f"{name}/fold{f}/seed{s}", f, FOLDS, s, synthetic_rows(shift, effects, noise_seed * 100 + s, fold_articles(f)),
                  frozenset(ARTICLES))
        for f in range(FOLDS) for s in seeds
    ]


def three_samplers() -> dict[tuple[str, str], list[U.RunRows]]:
    hybrid = sampler_runs("hybrid", 0.0, noise_seed=1)
    return {
        ("m", "mono"): sampler_runs("mono", -0.08, noise_seed=2),  # hybrid is truly 0.08 better
        ("m", "cross"): [U.RunRows(r.name.replace("hybrid", "cross"), r.fold, r.folds, r.seed, r.rows, r.all_articles) for r in hybrid],
        ("m", "hybrid"): hybrid,
    }


def test_pooling_tests_every_question_once_and_averages_the_pooled_rows() -> None:
    runs = three_samplers()[("m", "mono")]
    pooled = U.pool_runs(runs)
    assert pooled.questions("xquad_r_test") == len(ARTICLES) * 4 * len(LANGS)
    assert pooled.articles("xquad_r_test") == len(ARTICLES)
    # Every row of every fold once: (3 pairs + multi) rows per question.
    assert len(pooled.values) == sum(len(r.rows) for r in runs) == len(ARTICLES) * 4 * len(LANGS) * 4
    all_rows = [row for r in runs for row in r.rows]
    mono = [row["AP"] for row in all_rows if row["setting"] == "mono"]
    # One question per (language pair) cell and equal counts: the macro mean is the plain mean here.
    assert U.point_estimates(pooled, "xquad_r_test")["mono/mAP"] == pytest.approx(np.mean(mono))


def test_seeds_are_averaged_per_question_before_resampling() -> None:
    runs = sampler_runs("mono", 0.0, noise_seed=3, seeds=(1, 2))
    pooled = U.pool_runs(runs)
    assert pooled.seeds == (1, 2) and pooled.runs == 6
    key = ("xquad_r_test", "article0-q0", "en", "mono", "en")
    values = [row["AP"] for r in runs for row in r.rows if U._row_key(row) == key]
    assert len(values) == 2 and pooled.values[key]["AP"] == pytest.approx(np.mean(values))


def test_a_true_difference_is_found_and_identical_samplers_are_not_told_apart() -> None:
    results, comparisons = U.analyse(three_samplers(), resamples=4000, seed=0)
    assert all(r.error is None for r in results)
    by = {(c.a, c.b, c.metric): c.diff for c in comparisons}
    vs_mono = by["hybrid", "mono", "mono/mAP"]
    assert vs_mono.value == pytest.approx(0.08, abs=0.02)
    assert vs_mono.low > 0 and vs_mono.p_value < 0.05
    assert U.verdict("mono/mAP", vs_mono) == "hybrid better"
    bias = by["hybrid", "mono", "multi/lang_bias"]
    assert bias.high < 0 and U.verdict("multi/lang_bias", bias) == "hybrid better"  # lower bias is better
    for metric in U.METRICS:
        same = by["hybrid", "cross", metric]
        assert same.contains_zero() and same.p_value == 1.0
        assert U.verdict(metric, same) == U.NO_DIFFERENCE
    # mono − cross is in the family too; every p is Holm-adjusted over all 3 x 4 tests.
    assert {(c.a, c.b) for c in comparisons} == {("hybrid", "mono"), ("hybrid", "cross"), ("mono", "cross")}
    assert all(c.p_holm >= c.diff.p_value for c in comparisons)
    assert by["mono", "cross", "mono/mAP"].value == pytest.approx(-vs_mono.value, abs=0.02)
    markdown = U.to_markdown(results, comparisons, 4000)
    assert "no difference measured" in markdown and "hybrid − mono" in markdown and "mono − cross" in markdown
    assert "Holm family: these 12 tests" in markdown


def test_holm_adjusted_p_values_worked_by_hand() -> None:
    # Holm (1979) step-down by hand: sorted p 0.01, 0.02, 0.03, 0.5 times 4, 3, 2, 1, running maximum.
    assert U.holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])
    assert U.holm([0.4, 0.3]) == pytest.approx([0.6, 0.6])
    assert U.holm([]) == []


def test_interval_of_a_mean_agrees_with_scipy_bootstrap_over_article_means() -> None:
    rng = np.random.default_rng(5)
    article_means = rng.gamma(2.0, 0.1, size=30)
    # 3 questions per article whose mean is the article's mean: the cluster bootstrap of the pooled
    # mean is then the ordinary bootstrap of the article means.
    offsets = np.array([-0.02, 0.0, 0.02])
    values = {("b", f"a{i}-{k}", "en", "mono", "en"): {"AP": m + offsets[k]} for i, m in enumerate(article_means) for k in range(3)}
    pooled = U.Pooled(values, {key: key[1].split("-")[0] for key in values}, 1, None, (1,))
    ours = U.bootstrap_metric(U.cluster_table(pooled, "b", "mono/mAP"), resamples=20_000, seed=1)
    ref = stats.bootstrap((article_means,), np.mean, n_resamples=20_000, method="percentile", random_state=2).confidence_interval
    assert ours.value == pytest.approx(article_means.mean())
    spread = ref.high - ref.low
    assert ours.low == pytest.approx(ref.low, abs=0.03 * spread)
    assert ours.high == pytest.approx(ref.high, abs=0.03 * spread)


def test_pooled_metrics_of_one_run_equal_its_lareqa_metrics(tmp_path) -> None:
    bench, q_emb, c_emb = random_benchmark()
    metrics = score_lareqa(bench, q_emb, c_emb, per_query_path=tmp_path / "per_query.jsonl")
    pooled = U.pool_runs([U.RunRows("run", None, None, 1, U.read_per_query(tmp_path / "per_query.jsonl"))])
    got = U.point_estimates(pooled, "rand")
    for metric in U.METRICS:
        assert got[metric] == pytest.approx(metrics[metric], abs=1e-12)


def test_missing_or_repeated_folds_are_named() -> None:
    groups = three_samplers()
    groups["m", "mono"] = [r for r in groups["m", "mono"] if r.fold != 2]
    groups["m", "cross"] = groups["m", "cross"] + groups["m", "cross"][:1]
    results, comparisons = U.analyse(groups, resamples=200)
    errors = {r.sampler: r.error for r in results}
    assert "no run of fold(s) [2] of 3" in errors["mono"]
    assert "fold(s) [0] run more than once" in errors["cross"] and "tested in more than one run" in errors["cross"]
    assert errors["hybrid"] is None
    assert all(c.diff is None and c.note.startswith("not compared") for c in comparisons)
    markdown = U.to_markdown(results, comparisons, 200)
    assert "do not test every question exactly once" in markdown
    with pytest.raises(U.FoldCoverageError, match="fold"):
        U.pool_runs(groups["m", "mono"])


def test_a_bad_line_names_the_file_and_line(tmp_path) -> None:
    path = tmp_path / "per_query.jsonl"
    path.write_text('{"benchmark": "b"}\n')
    with pytest.raises(U.PerQueryFileError, match=r"per_query.jsonl:1: missing keys"):
        U.read_per_query(path)


def zero_shot_runs() -> list[U.RunRows]:
    """The untrained backbone: one run per fold, no seed, truly 0.2 below hybrid."""
    return [U.RunRows(f"zs/fold{r.fold}", r.fold, r.folds, None, r.rows, r.all_articles) for r in sampler_runs("zs", -0.2, noise_seed=3)]


def test_every_trained_sampler_is_compared_with_zero_shot_on_all_its_seeds() -> None:
    groups = {("m", "hybrid"): sampler_runs("hybrid", 0.0, noise_seed=1, seeds=(1, 2)), ("m", U.ZERO_SHOT): zero_shot_runs()}
    results, comparisons = U.analyse(groups, resamples=2000, seed=0)
    assert {r.sampler: r.pooled.runs for r in results} == {"hybrid": 6, U.ZERO_SHOT: 3}
    mono = next(c for c in comparisons if c.metric == "mono/mAP")
    assert (mono.a, mono.b, mono.seeds, mono.note) == ("hybrid", U.ZERO_SHOT, (1, 2), "")
    assert mono.diff.value == pytest.approx(0.2, abs=0.03) and mono.diff.low > 0


def write_runs(root, groups) -> None:
    """The groups' runs as training-run folders (.hydra, metrics.json, split.json, per-query rows)."""
    zero_shot = {r.fold: r.rows for r in zero_shot_runs()}
    for (model, sampler), runs in groups.items():
        for run in runs:
            d = root / run.name
            (d / ".hydra").mkdir(parents=True)
            OmegaConf.save({"hydra": {"runtime": {"choices": {"model": model, "sampler": sampler}}}}, d / ".hydra" / "hydra.yaml")
            cfg = {"seed": run.seed, "sampler": {"alpha": 0.5 if sampler == "hybrid" else None},
                   "data": {"source": {"split": {"folds": FOLDS, "fold": run.fold}}}}
            OmegaConf.save(cfg, d / ".hydra" / "config.yaml")
            (d / "metrics.json").write_text(json.dumps({"test/mono/mAP": 0.5, "baseline/test/mono/mAP": 0.1 * run.fold}))
            (d / "split.json").write_text(json.dumps({"test": fold_articles(run.fold), "train": [a for a in ARTICLES if a not in fold_articles(run.fold)], "val": []}))
            (d / "per_query.jsonl").write_text("".join(json.dumps(row) + "\n" for row in run.rows))
            (d / "baseline_per_query.jsonl").write_text("".join(json.dumps(row) + "\n" for row in zero_shot[run.fold]))


def test_the_sweep_report_writes_intervals_table_csv_and_plot(tmp_path) -> None:
    write_runs(tmp_path, three_samplers())
    markdown = write_report(tmp_path, resamples=500)
    assert "95% confidence intervals" in markdown and "| xquad_r_test | m | hybrid | 3 | 3 | 1 | 144 | 12 |" in markdown
    # The baseline rows: one run per fold (the three samplers' copies are the same backbone), no seed.
    assert "| xquad_r_test | m | zero-shot | 3 | 3 | None | 144 | 12 |" in markdown
    assert "| xquad_r_test | m | hybrid − zero-shot | mono mAP |" in markdown
    # The metrics table's zero-shot row: one baseline per fold (0.0, 0.1, 0.2), not one copy of fold 0's.
    assert "| m | zero-shot | 3 | 0.100 ± 0.100 |" in (tmp_path / "report.md").read_text() and "| xquad_r_test | m | mono − zero-shot |" in markdown
    assert (tmp_path / "uncertainty.png").stat().st_size > 0
    csv_text = (tmp_path / "uncertainty.csv").read_text()
    assert "hybrid - mono" in csv_text and "p_value" in csv_text


def test_folders_of_one_sampler_are_compared_pairwise_with_holm(tmp_path, capsys) -> None:
    """`python -m hybatch.report.compare`: a change that is not a sampler (here: the synthetic mono runs,
    0.08 worse, filed as hybrid runs without the change, and the cross runs as a third setting)."""
    from hybatch.report.compare import compare_folders, main

    groups = three_samplers()
    write_runs(tmp_path / "with", {("m", "hybrid"): groups["m", "hybrid"]})
    write_runs(tmp_path / "without", {("m", "hybrid"): groups["m", "mono"]})
    write_runs(tmp_path / "other", {("m", "hybrid"): groups["m", "cross"]})
    two = compare_folders([tmp_path / "with", tmp_path / "without"], ["with", "without"], "hybrid", resamples=500)
    by = {c.metric: c for c in two}
    assert by["mono/mAP"].diff.value == pytest.approx(0.08, abs=0.02) and by["mono/mAP"].reading() == "with better"
    assert all(c.p_holm >= c.diff.p_value for c in two) and len(two) == 4
    three = compare_folders([tmp_path / "with", tmp_path / "without", tmp_path / "other"], ["w", "wo", "o"], "hybrid", resamples=500)
    assert [(c.a, c.b) for c in three[::4]] == [("w", "wo"), ("w", "o"), ("wo", "o")] and len(three) == 12
    # Holm over the family of 12: never below the correction over the 4 of one pair.
    same = {c.metric: c for c in three if (c.a, c.b) == ("w", "wo")}
    assert all(same[m].p_holm >= by[m].p_holm for m in by)
    with pytest.raises(ValueError, match="expected the runs of one model with sampler 'cross'"):
        compare_folders([tmp_path / "with", tmp_path / "without"], ["a", "b"], "cross")
    # --seeds: the runs of those seeds only (these synthetic runs are all seed 1).
    assert [c.diff.value for c in compare_folders([tmp_path / "with", tmp_path / "without"], ["with", "without"], "hybrid",
                                                  resamples=500, seeds=[1])] == [c.diff.value for c in two]  # fmt: skip
    with pytest.raises(ValueError, match=r"with sampler 'hybrid' and seed in \[2\], found"):
        compare_folders([tmp_path / "with", tmp_path / "without"], ["a", "b"], "hybrid", seeds=[2])
    with pytest.raises(ValueError, match="two or more folders with as many distinct labels"):
        compare_folders([tmp_path / "with", tmp_path / "without"], ["a", "a"], "hybrid")
    main([str(tmp_path / "with"), str(tmp_path / "without"), "--resamples", "200", "--labels", "with", "without",
          "--plot", str(tmp_path / "compare.png")])  # fmt: skip
    assert "| with − without |" in capsys.readouterr().out and (tmp_path / "compare.png").stat().st_size > 0
