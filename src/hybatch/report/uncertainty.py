"""Confidence intervals and paired tests for LAReQA results pooled over cross-validation folds.

Input: the `per_query.jsonl` rows of training runs (`hybatch.evaluation.lareqa_scoring.per_query_rows`), one
run per (sampler, fold, seed). For one sampler the folds are pooled (each question is tested in
exactly one fold: `pool_runs` checks it and raises `FoldCoverageError` otherwise) and each question's
value is averaged over seeds. The metrics are then the LAReQA macro-averages of those rows, exactly as
`aggregate_lareqa` computes them: mean per (query language, candidate language) pair, then over the
pairs (mono / cross mAP); mean per query language in the multilingual pool, then over languages
(multi mAP, language bias).

Uncertainty: questions are not independent (a model that knows an article answers its questions
well in every language), so the unit resampled is the ARTICLE (cluster bootstrap): a resample draws
the pool's articles with replacement and takes every row of each drawn article as often as it was
drawn. Each metric is a ratio of per-article sums, so a resample is a matrix product of the
articles' draw counts with per-article (sum, count) tables: 10,000 resamples take well under a second.
The 95% interval is the percentile interval. A difference between two samplers is paired: the same
resampled articles for both (same questions, folds and seeds); its two-sided p-value is the paired
cluster-bootstrap p-value 2 * min(P*(d <= 0), P*(d >= 0)) (with the +1 correction), the test that
the percentile interval inverts, so p < 0.05 exactly when the interval excludes 0.

Multiplicity: the family is every paired difference the report prints (each pair of samplers, and
each sampler against the zero-shot backbone, on every metric and benchmark). Their p-values get
Holm's step-down correction (`holm`), and a difference is read as one only when its Holm-adjusted
p-value is below 0.05; otherwise "no difference measured", whatever its own interval says.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Reported metric -> (setting of its rows, the row's value, higher is better).
METRICS: dict[str, tuple[str, str, bool]] = {
    "mono/mAP": ("mono", "AP", True),
    "cross/mAP": ("cross", "AP", True),
    "multi/mAP": ("multi", "AP", True),
    "multi/lang_bias": ("multi", "rank_distance", False),
}
LABELS = {"mono/mAP": "mono mAP", "cross/mAP": "cross mAP", "multi/mAP": "multi mAP", "multi/lang_bias": "lang bias"}
NO_DIFFERENCE = "no difference measured"
FOREST_LEGEND = f"grey: {NO_DIFFERENCE} (interval contains 0, or Holm p >= 0.05)"
ALPHA = 0.05
# The untrained backbone's rows (training runs' baseline_per_query.jsonl): one run per fold, no seed.
ZERO_SHOT = "zero-shot"


class FoldCoverageError(ValueError):
    """The runs of one sampler do not test every question exactly once per seed."""


class PerQueryFileError(ValueError):
    """A per_query.jsonl line is not what `per_query_rows` writes."""


@dataclass(frozen=True)
class RunRows:
    """One training run's per-query rows and where it sits in the sweep.

    `fold` / `folds`: `data.source.split.fold` / `folds` (None for a run without cross-validation: its
    test split is then the whole pool); `all_articles`: every article of the run's data (train, val and
    test of `split.json`), to check that the folds' test articles cover them; `name` identifies the run
    in messages.
    """

    name: str
    fold: int | None
    folds: int | None
    seed: int | None
    rows: Sequence[Mapping[str, Any]]
    all_articles: frozenset[str] | None = None


@dataclass
class Pooled:
    """Seed-averaged rows of one sampler, keyed (benchmark, qid, lang, setting, candidate_lang)."""

    values: dict[tuple[str, str, str, str, str], dict[str, float]]
    article: dict[tuple[str, str, str, str, str], str]
    runs: int
    folds: int | None
    seeds: tuple[Any, ...]
    notes: list[str] = field(default_factory=list)

    def benchmarks(self) -> list[str]:
        return sorted({key[0] for key in self.values})

    def questions(self, benchmark: str) -> int:
        return len({key[1:3] for key in self.values if key[0] == benchmark})

    def articles(self, benchmark: str) -> int:
        return len({a for key, a in self.article.items() if key[0] == benchmark})


def read_per_query(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a per_query.jsonl; a line that is not a row names the file and line."""
    rows = []
    required = ("benchmark", "qid", "lang", "article", "setting", "candidate_lang", "AP")
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PerQueryFileError(f"{path}:{number}: not JSON ({e.msg})") from None
            missing = [k for k in required if k not in row]
            if missing:
                raise PerQueryFileError(f"{path}:{number}: missing keys {missing}; expected the keys of per_query_rows")
            rows.append(row)
    if not rows:
        raise PerQueryFileError(f"{path}: no rows")
    return rows


def _row_key(row: Mapping[str, Any]) -> tuple[str, str, str, str, str]:
    return (str(row["benchmark"]), str(row["qid"]), str(row["lang"]), str(row["setting"]), str(row["candidate_lang"]))


def check_coverage(runs: Sequence[RunRows]) -> None:
    """Raise `FoldCoverageError` unless, for every seed, the runs are folds 0..K-1 once each (or one
    run without folds), no question is tested in two of them, and their test articles cover all the
    articles of the data (when `all_articles` is known)."""
    if not runs:
        raise FoldCoverageError("no runs")
    folds = {r.folds for r in runs}
    if len(folds) > 1:
        raise FoldCoverageError(f"runs with different numbers of folds {sorted(map(str, folds))}: {[r.name for r in runs]}")
    k = folds.pop()
    by_seed: dict[Any, list[RunRows]] = defaultdict(list)
    for run in runs:
        by_seed[run.seed].append(run)
    problems = []
    for seed, seed_runs in sorted(by_seed.items(), key=lambda item: str(item[0])):
        present = [r.fold for r in seed_runs]
        if k is None:
            if len(seed_runs) > 1:
                problems.append(f"seed {seed}: {len(seed_runs)} runs without folds ({[r.name for r in seed_runs]}) test the same split")
        else:
            missing = sorted(set(range(k)) - set(present))
            repeated = sorted({f for f in present if present.count(f) > 1})
            if missing:
                problems.append(f"seed {seed}: no run of fold(s) {missing} of {k}")
            if repeated:
                problems.append(f"seed {seed}: fold(s) {repeated} run more than once")
        tested_in: dict[tuple[str, str, str], str] = {}
        twice: set[tuple[str, str, str]] = set()
        for run in seed_runs:
            for question in {(str(r["benchmark"]), str(r["qid"]), str(r["lang"])) for r in run.rows}:
                if question in tested_in:
                    twice.add(question)
                tested_in.setdefault(question, run.name)
        if twice:
            example = sorted(twice)[0]
            problems.append(f"seed {seed}: {len(twice)} question(s) tested in more than one run, e.g. {example} in {tested_in[example]} and another")
        known = set().union(*(r.all_articles or () for r in seed_runs))
        tested = {str(row["article"]) for r in seed_runs for row in r.rows}
        if known and k is not None and not known <= tested:
            problems.append(f"seed {seed}: {len(known - tested)} article(s) of the data tested in no fold, e.g. {sorted(known - tested)[:3]}")
    if problems:
        raise FoldCoverageError("; ".join(problems))


def pool_runs(runs: Sequence[RunRows], seeds: Iterable[Any] | None = None) -> Pooled:
    """Check the folds (`check_coverage`) and average each row's values over the seeds (all seeds, or
    only `seeds`): every question then has one value per setting and candidate language."""
    chosen = list(runs) if seeds is None else [r for r in runs if r.seed in set(seeds)]
    check_coverage(chosen)
    sums: dict[tuple[str, str, str, str, str], dict[str, float]] = {}
    counts: dict[tuple[str, str, str, str, str], int] = defaultdict(int)
    article: dict[tuple[str, str, str, str, str], str] = {}
    fields = {f for _, f, _ in METRICS.values()}
    for run in chosen:
        for row in run.rows:
            key = _row_key(row)
            acc = sums.setdefault(key, {})
            for name in fields & row.keys():
                acc[name] = acc.get(name, 0.0) + float(row[name])
            counts[key] += 1
            article[key] = str(row["article"])
    n_seeds = len({r.seed for r in chosen})
    uneven = [key for key, n in counts.items() if n != n_seeds]
    if uneven:
        raise FoldCoverageError(f"{len(uneven)} row(s) are in some seeds' runs but not others', e.g. {uneven[0]}")
    values = {key: {name: v / counts[key] for name, v in acc.items()} for key, acc in sums.items()}
    return Pooled(values, article, len(chosen), chosen[0].folds, tuple(sorted({r.seed for r in chosen}, key=str)))


@dataclass(frozen=True)
class ClusterTable:
    """A metric as per-article sums and counts per cell (a language pair, or a query language):
    the metric is the mean over cells of sum / count, the cells with no rows left out."""

    articles: tuple[str, ...]
    cells: tuple[tuple[str, ...], ...]
    sums: np.ndarray  # (articles, cells)
    counts: np.ndarray  # (articles, cells)


def cluster_table(
    pooled: Pooled, benchmark: str, metric: str, articles: Sequence[str] | None = None,
    cells: Sequence[tuple[str, ...]] | None = None,
) -> ClusterTable:
    """The (article x cell) table of one metric (`METRICS`); `articles` / `cells` fix the order (to pair)."""
    setting, name, _ = METRICS[metric]
    entries = []
    for key, values in pooled.values.items():
        if key[0] != benchmark or key[3] != setting or name not in values:
            continue
        cell = (key[2],) if setting == "multi" else (key[2], key[4])
        entries.append((pooled.article[key], cell, values[name]))
    if not entries:
        raise ValueError(f"{benchmark}: no {setting} rows with {name!r} for {metric}")
    articles = tuple(articles if articles is not None else sorted({a for a, _, _ in entries}))
    cells = tuple(cells if cells is not None else sorted({c for _, c, _ in entries}))
    a_index = {a: i for i, a in enumerate(articles)}
    c_index = {c: i for i, c in enumerate(cells)}
    sums = np.zeros((len(articles), len(cells)))
    counts = np.zeros((len(articles), len(cells)))
    for a, c, v in entries:
        sums[a_index[a], c_index[c]] += v
        counts[a_index[a], c_index[c]] += 1
    return ClusterTable(articles, cells, sums, counts)


def macro_mean(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean over the last axis' cells of sum / count, cells with count 0 left out (as `aggregate_lareqa`
    skips a pair without answers). Works on (cells,) and on (resamples, cells)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.where(counts > 0, counts, 1), np.nan)
    return np.nanmean(means, axis=-1)


def article_draws(n_articles: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, articles) draw counts of a bootstrap over articles, from `seed`."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_articles, np.full(n_articles, 1.0 / n_articles), size=resamples).astype(np.float64)


def resampled(table: ClusterTable, draws: np.ndarray) -> np.ndarray:
    """The metric on every resample of `draws` (one value per row of `draws`)."""
    return macro_mean(draws @ table.sums, draws @ table.counts)


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    p_value: float | None = None  # differences only

    def contains_zero(self) -> bool:
        return self.low <= 0.0 <= self.high


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_metric(table: ClusterTable, resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> Estimate:
    """The metric and its percentile interval over `resamples` article resamples."""
    value = float(macro_mean(table.sums.sum(0), table.counts.sum(0)))
    low, high = percentile_interval(resampled(table, article_draws(len(table.articles), resamples, seed)), level)
    return Estimate(value, low, high)


def paired_difference(
    a: ClusterTable, b: ClusterTable, resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> Estimate:
    """a - b on the same questions: the same article resamples for both; interval and p-value as in
    the module docstring. The two tables must have the same articles, cells and counts."""
    if a.articles != b.articles or a.cells != b.cells or not np.array_equal(a.counts, b.counts):
        raise ValueError("a paired difference needs the same questions on both sides (articles, cells and counts differ)")
    value = float(macro_mean(a.sums.sum(0), a.counts.sum(0)) - macro_mean(b.sums.sum(0), b.counts.sum(0)))
    draws = article_draws(len(a.articles), resamples, seed)
    diffs = resampled(a, draws) - resampled(b, draws)
    diffs = diffs[np.isfinite(diffs)]
    low, high = percentile_interval(diffs, level)
    n = len(diffs)
    p = 2 * min((np.sum(diffs <= 0) + 1) / (n + 1), (np.sum(diffs >= 0) + 1) / (n + 1))
    return Estimate(value, low, high, float(min(1.0, p)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control), in the input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def adjust_family(comparisons: Sequence[Comparison]) -> None:
    """Set `p_holm` of every compared difference, Holm-adjusted over all of them as one family."""
    tested = [c for c in comparisons if c.diff is not None]
    for c, p in zip(tested, holm([c.diff.p_value for c in tested]), strict=True):
        c.p_holm = p


def verdict(metric: str, diff: Estimate, name: str = "hybrid", p_adjusted: float | None = None) -> str:
    """The wording rule: an interval containing 0, or a multiplicity-adjusted p-value of 0.05 or more,
    is "no difference measured"."""
    if diff.contains_zero() or (p_adjusted is not None and p_adjusted >= ALPHA):
        return NO_DIFFERENCE
    better = (diff.value > 0) == METRICS[metric][2]
    return f"{name} {'better' if better else 'worse'}"


@dataclass
class SamplerResult:
    model: str
    sampler: str
    pooled: Pooled | None
    error: str | None = None
    estimates: dict[tuple[str, str], Estimate] = field(default_factory=dict)  # (benchmark, metric)


@dataclass
class Comparison:
    model: str
    a: str
    b: str
    benchmark: str
    metric: str
    diff: Estimate | None
    seeds: tuple[Any, ...]
    note: str = ""
    p_holm: float | None = None  # Holm-adjusted over the report's family of paired differences

    def reading(self) -> str:
        return verdict(self.metric, self.diff, self.a, self.p_holm) + (f" ({self.note})" if self.note else "")


def analyse(
    groups: Mapping[tuple[str, str], Sequence[RunRows]], resamples: int = 10_000, seed: int = 0,
) -> tuple[list[SamplerResult], list[Comparison]]:
    """Per (model, sampler) group: pooled metrics with intervals; per model: every hybrid sampler
    against mono and against cross, mono against cross, paired on the seeds both have, and every
    trained sampler against the zero-shot backbone (`ZERO_SHOT` group, when present); all their
    p-values Holm-adjusted as one family. A group whose runs do not cover the folds gets its error
    message instead of numbers."""
    results = []
    for (model, sampler), runs in groups.items():
        try:
            pooled = pool_runs(runs)
        except FoldCoverageError as e:
            results.append(SamplerResult(model, sampler, None, f"{sampler}: {e}"))
            continue
        result = SamplerResult(model, sampler, pooled)
        for bench in pooled.benchmarks():
            for metric in METRICS:
                result.estimates[bench, metric] = bootstrap_metric(cluster_table(pooled, bench, metric), resamples, seed)
        results.append(result)
    comparisons = []
    models = sorted({m for m, _ in groups})
    for model in models:
        samplers = [s for m, s in groups if m == model]
        pairs = [(a, b) for a in samplers if a.startswith("hybrid") for b in ("mono", "cross") if b in samplers]
        if "mono" in samplers and "cross" in samplers:
            pairs.append(("mono", "cross"))
        if ZERO_SHOT in samplers:
            pairs += [(a, ZERO_SHOT) for a in samplers if a != ZERO_SHOT]
        for a, b in pairs:
            comparisons.extend(paired_comparisons(model, a, b, groups[model, a], groups[model, b], resamples, seed))
    adjust_family(comparisons)
    return results, comparisons


def paired_comparisons(
    model: str, a: str, b: str, runs_a: Sequence[RunRows], runs_b: Sequence[RunRows], resamples: int, seed: int
) -> list[Comparison]:
    seeds_a, seeds_b = {r.seed for r in runs_a}, {r.seed for r in runs_b}
    # The untrained backbone has no training seed: every seed of `a` is paired with its one set of rows.
    common = tuple(sorted(seeds_a if b == ZERO_SHOT else seeds_a & seeds_b, key=str))
    note = "" if seeds_a == seeds_b or b == ZERO_SHOT else f"paired on the seeds both have: {list(common)}"
    try:
        if not common:
            raise FoldCoverageError(f"no seed in common ({sorted(map(str, seeds_a))} vs {sorted(map(str, seeds_b))})")
        pa, pb = pool_runs(runs_a, common), pool_runs(runs_b, None if b == ZERO_SHOT else common)
        if pa.values.keys() != pb.values.keys():
            raise FoldCoverageError("the two samplers' runs tested different questions")
    except FoldCoverageError as e:
        return [Comparison(model, a, b, "-", "-", None, common, f"not compared: {e}")]
    out = []
    for bench in pa.benchmarks():
        for metric in METRICS:
            ta = cluster_table(pa, bench, metric)
            tb = cluster_table(pb, bench, metric, ta.articles, ta.cells)
            out.append(Comparison(model, a, b, bench, metric, paired_difference(ta, tb, resamples, seed), common, note))
    return out


def _fmt(metric: str, x: float) -> str:
    return f"{x:.1f}" if metric.endswith("lang_bias") else f"{x:.3f}"


def to_markdown(results: Sequence[SamplerResult], comparisons: Sequence[Comparison], resamples: int) -> str:
    """The interval table and the paired differences, with the method in a line."""
    lines = [
        "### 95% confidence intervals (folds pooled, each question's value averaged over seeds)",
        "",
        f"Cluster bootstrap over articles, {resamples:,} resamples, percentile intervals; differences paired "
        "(same articles resampled for both samplers), p-value two-sided from the same paired bootstrap; "
        "Holm-adjusted over the family of every paired difference below, which is read as a difference only "
        "when that adjusted p is below 0.05.",
        "",
    ]
    metric_names = list(METRICS)
    header = ["benchmark", "model", "batches", "runs", "folds", "seeds", "questions", "articles", *(LABELS[m] for m in metric_names)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    errors = []
    for r in results:
        if r.pooled is None:
            errors.append(f"* **{r.model} / {r.error}** (no intervals for it)")
            continue
        for bench in r.pooled.benchmarks():
            cells = [bench, r.model, r.sampler, str(r.pooled.runs), str(r.pooled.folds or "-"),
                     ", ".join(map(str, r.pooled.seeds)), str(r.pooled.questions(bench)), str(r.pooled.articles(bench))]
            for metric in metric_names:
                e = r.estimates[bench, metric]
                cells.append(f"{_fmt(metric, e.value)} [{_fmt(metric, e.low)}, {_fmt(metric, e.high)}]")
            lines.append("| " + " | ".join(cells) + " |")
    if errors:
        lines += ["", "Runs that do not test every question exactly once:", "", *errors]
    if comparisons:
        family = sum(c.diff is not None for c in comparisons)
        lines += ["", f"### Paired differences (Holm family: these {family} tests)", "",
                  "| benchmark | model | difference | metric | value | 95% CI | p | p (Holm) | reading |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in comparisons:
            if c.diff is None:
                lines.append(f"| {c.benchmark} | {c.model} | {c.a} − {c.b} | – | – | – | – | – | {c.note} |")
                continue
            d = c.diff
            lines.append(
                f"| {c.benchmark} | {c.model} | {c.a} − {c.b} | {LABELS[c.metric]} | {_fmt(c.metric, d.value)} | "
                f"[{_fmt(c.metric, d.low)}, {_fmt(c.metric, d.high)}] | {d.p_value:.4f} | {c.p_holm:.4f} | {c.reading()} |"
            )
    return "\n".join(lines) + "\n"


def to_rows(results: Sequence[SamplerResult], comparisons: Sequence[Comparison]) -> list[dict[str, Any]]:
    """Long-format CSV rows: one per (sampler, metric) estimate and per paired difference."""
    rows = []
    for r in results:
        if r.pooled is None:
            rows.append({"model": r.model, "compared": r.sampler, "note": r.error})
            continue
        for (bench, metric), e in r.estimates.items():
            rows.append({"benchmark": bench, "model": r.model, "compared": r.sampler, "metric": metric, "value": e.value,
                         "ci_low": e.low, "ci_high": e.high, "runs": r.pooled.runs, "folds": r.pooled.folds,
                         "seeds": " ".join(map(str, r.pooled.seeds)), "questions": r.pooled.questions(bench),
                         "articles": r.pooled.articles(bench)})
    for c in comparisons:
        row: dict[str, Any] = {"benchmark": c.benchmark, "model": c.model, "compared": f"{c.a} - {c.b}", "metric": c.metric,
                               "seeds": " ".join(map(str, c.seeds)), "note": c.note}
        if c.diff is not None:
            row.update(value=c.diff.value, ci_low=c.diff.low, ci_high=c.diff.high, p_value=c.diff.p_value,
                       p_holm=c.p_holm, reading=verdict(c.metric, c.diff, c.a, c.p_holm))
        rows.append(row)
    return rows


def plot(results: Sequence[SamplerResult], comparisons: Sequence[Comparison], path: Path) -> None:
    """Bars with 95% intervals: mAP per setting and language bias per sampler; paired differences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [(r, bench) for r in results if r.pooled is not None for bench in r.pooled.benchmarks()]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5), gridspec_kw={"width_ratios": [3, 1.2, 3]})
    maps = [m for m in METRICS if m.endswith("mAP")]
    width = 0.8 / max(len(ok), 1)
    for i, (r, bench) in enumerate(ok):
        label = f"{r.model} / {r.sampler}" + (f" ({bench})" if len({b for _, b in ok}) > 1 else "")
        for ax, metrics in ((axes[0], maps), (axes[1], ["multi/lang_bias"])):
            es = [r.estimates[bench, m] for m in metrics]
            x = np.arange(len(metrics)) + i * width - 0.4 + width / 2
            err = np.array([[e.value - e.low for e in es], [e.high - e.value for e in es]])
            ax.bar(x, [e.value for e in es], width, yerr=err, capsize=3, label=label)
    axes[0].set_xticks(np.arange(len(maps)), maps)
    axes[0].set_ylabel("mAP (95% CI)")
    axes[0].legend(fontsize=8, loc="lower left")
    axes[1].set_xticks([0], ["language bias (lower is better)"])
    axes[1].set_ylabel("mean rank distance (95% CI)")
    draw_forest(axes[2], [c for c in comparisons if c.metric.endswith("mAP")], "paired mAP difference (95% CI)")
    axes[2].set_title(FOREST_LEGEND, fontsize=9)
    for ax in axes[:2]:
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_forest(ax: Any, comparisons: Sequence[Comparison], xlabel: str) -> None:
    """A forest plot on `ax`: one row per paired difference, its label on the axis where it can be read;
    grey where no difference is measured."""
    from matplotlib.ticker import MaxNLocator

    done = [c for c in comparisons if c.diff is not None]
    for j, c in enumerate(done):
        colour = "tab:grey" if verdict(c.metric, c.diff, c.a, c.p_holm) == NO_DIFFERENCE else "tab:blue"
        ax.errorbar([c.diff.value], [j], xerr=[[c.diff.value - c.diff.low], [c.diff.high - c.diff.value]],
                    fmt="o", capsize=3, color=colour)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))  # differences of thousandths: long tick labels
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_yticks(range(len(done)), [f"{c.a} − {c.b}: {LABELS[c.metric]}" for c in done], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)


def point_estimates(pooled: Pooled, benchmark: str) -> dict[str, float]:
    """The metrics of the pooled rows without resampling (equal to metrics.json's for one run)."""
    out = {}
    for metric in METRICS:
        table = cluster_table(pooled, benchmark, metric)
        out[metric] = float(macro_mean(table.sums.sum(0), table.counts.sum(0)))
    return {k: v for k, v in out.items() if not math.isnan(v)}
