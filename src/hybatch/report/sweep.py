"""Collect the runs of a sweep into the paper's table: `python -m hybatch.report <multirun dir>`.

Rows are model x sampler (x alpha when it varies), mean and standard deviation over its runs (seeds,
and cross-validation folds: for those, the pooled intervals below are the numbers to read), with the
configured fraction of monolingual batches beside the one the runs realized (`composition/...`);
columns are mono / cross / multi mAP, recall and language bias for every benchmark found in the
runs' metrics.json. Training runs also contribute a "zero-shot" row from their baseline metrics.
Writes `report.md`, `report.csv` and `report.png` (grouped bars) into the sweep dir. Runs with
`per_query.jsonl` also get 95% intervals and paired differences, their folds pooled
(`hybatch.report.uncertainty`): `uncertainty.md`, `uncertainty.csv` and `uncertainty.png`; their
`baseline_per_query.jsonl` (the untrained backbone on the same test split) gives the zero-shot row
and each sampler's difference from it.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from hybatch.report import uncertainty
from hybatch.run_outputs import BASELINE_PER_QUERY, PER_QUERY

log = logging.getLogger(__name__)

COLUMNS = (
    ("mono/mAP", "mono mAP"),
    ("cross/mAP", "cross mAP"),
    ("multi/mAP", "multi mAP"),
    ("mono/R@1", "mono R@1"),
    ("cross/R@1", "cross R@1"),
    ("multi/R@10", "multi R@10"),
    ("multi/lang_bias", "lang bias"),
)
# metrics.json prefixes that hold LAReQA results: training runs' test split, evaluate.py's benchmarks.
BENCHMARK_PREFIXES = ("test/", "xquad_r/", "mlqa_r/")
# The weight-interpolation λ a run chose (`interpolation=wise_ft`; hybatch.interpolation).
LAMBDA_KEY = "interpolation/lambda"
# Fraction of monolingual batches: configured (mono 1, cross 0, hybrid sampler.alpha) and realized.
ALPHA_SET, ALPHA_REALIZED = "configured/alpha", "composition/mono_fraction"
CONFIGURED_ALPHA = {"mono": 1.0, "cross": 0.0}


@dataclass(frozen=True)
class RunKey:
    model: str
    sampler: str


def _run_identity(run_dir: Path) -> tuple[str, str, float | None, int | None]:
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    config_file = run_dir / ".hydra" / "config.yaml"
    if not hydra_file.is_file() or not config_file.is_file():
        raise FileNotFoundError(f"{run_dir} has metrics.json but no .hydra/hydra.yaml and config.yaml")
    choices = OmegaConf.load(hydra_file).hydra.runtime.choices
    cfg = OmegaConf.load(config_file)
    alpha = OmegaConf.select(cfg, "sampler.alpha", default=None)
    return str(choices.get("model")), str(choices.get("sampler")), alpha, OmegaConf.select(cfg, "seed", default=None)


def _sampler_label(sampler: str, alpha: float | None, alphas: set[float | None]) -> str:
    return f"{sampler} (alpha={alpha:g})" if sampler == "hybrid" and alpha is not None and len(alphas) > 1 else sampler


def collect_per_query(sweep_dir: Path) -> dict[tuple[str, str], list[uncertainty.RunRows]]:
    """Every run's per_query.jsonl under `sweep_dir` with its fold and seed, grouped by (model, sampler),
    and the zero-shot group from the runs' baseline_per_query.jsonl: one per (model, fold), since the
    untrained backbone's rows do not depend on the sampler or the training seed."""
    files = sorted(sweep_dir.rglob(PER_QUERY))
    runs = []
    for path in files:
        # A training run writes <run>/per_query.jsonl, evaluate.py <run>/<benchmark>/per_query.jsonl.
        run_dir = next((d for d in (path.parent, path.parent.parent) if (d / ".hydra").is_dir()), None)
        if run_dir is None:
            log.warning("%s: no .hydra/ beside it or one folder up; left out of the intervals", path)
            continue
        model, sampler, alpha, seed = _run_identity(run_dir)
        articles = _split_articles(run_dir)
        fold, folds = _fold(run_dir)
        name = str(run_dir.relative_to(sweep_dir))
        runs.append((model, sampler, alpha, uncertainty.RunRows(name, fold, folds, seed, uncertainty.read_per_query(path), articles)))
    alphas = {alpha for _, sampler, alpha, _ in runs if sampler == "hybrid"}
    groups: dict[tuple[str, str], list[uncertainty.RunRows]] = defaultdict(list)
    for run_dir in sorted(p.parent for p in sweep_dir.rglob(BASELINE_PER_QUERY)):
        if not (run_dir / ".hydra").is_dir():
            log.warning("%s: no .hydra/ beside it; left out of the intervals", run_dir / BASELINE_PER_QUERY)
            continue
        model = _run_identity(run_dir)[0]
        fold, folds = _fold(run_dir)
        if any(r.fold == fold for r in groups[model, uncertainty.ZERO_SHOT]):
            continue
        rows = uncertainty.read_per_query(run_dir / BASELINE_PER_QUERY)
        name = f"{run_dir.relative_to(sweep_dir)} (baseline)"
        groups[model, uncertainty.ZERO_SHOT].append(uncertainty.RunRows(name, fold, folds, None, rows, _split_articles(run_dir)))
    for model, sampler, alpha, run in runs:
        groups[model, _sampler_label(sampler, alpha, alphas)].append(run)
    return dict(groups)


def _fold(run_dir: Path) -> tuple[int | None, int | None]:
    """(fold, folds) of a run's cross-validation split; None for a run without folds."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    return OmegaConf.select(cfg, "data.source.split.fold", default=None), OmegaConf.select(cfg, "data.source.split.folds", default=None)


def _split_articles(run_dir: Path) -> frozenset[str] | None:
    """Every article of the run's data (train, val and test of split.json), when it wrote one."""
    split_file = run_dir / "split.json"
    if not split_file.is_file():
        return None
    return frozenset(t for titles in json.loads(split_file.read_text()).values() for t in titles)


def write_uncertainty(sweep_dir: Path, resamples: int = 10_000, seed: int = 0) -> str:
    """Intervals and paired differences of the runs with per_query.jsonl (empty string: none has)."""
    groups = collect_per_query(sweep_dir)
    if not groups:
        return ""
    results, comparisons = uncertainty.analyse(groups, resamples=resamples, seed=seed)
    markdown = uncertainty.to_markdown(results, comparisons, resamples)
    (sweep_dir / "uncertainty.md").write_text(markdown)
    rows = uncertainty.to_rows(results, comparisons)
    with (sweep_dir / "uncertainty.csv").open("w", newline="") as f:
        fields = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    uncertainty.plot(results, comparisons, sweep_dir / "uncertainty.png")
    return markdown


def collect(sweep_dir: Path) -> dict[RunKey, list[dict[str, float]]]:
    """Every run's metrics under `sweep_dir`, grouped by (model, sampler); seeds are the repeats."""
    runs = sorted(sweep_dir.rglob("metrics.json"))
    if not runs:
        raise FileNotFoundError(f"no metrics.json under {sweep_dir}")
    identities = {r: _run_identity(r.parent) for r in runs}
    alphas = {alpha for _, sampler, alpha, _ in identities.values() if sampler == "hybrid"}
    groups: dict[RunKey, list[dict[str, float]]] = defaultdict(list)
    zero_shot: dict[str, dict[object, dict[str, float]]] = defaultdict(dict)
    for path in runs:
        model, sampler, alpha, _ = identities[path]
        metrics = {k: v for k, v in json.loads(path.read_text()).items() if v is not None}
        configured = CONFIGURED_ALPHA.get(sampler, alpha)
        if configured is not None:
            metrics[ALPHA_SET] = float(configured)
        groups[RunKey(model, _sampler_label(sampler, alpha, alphas))].append({k: v for k, v in metrics.items() if not k.startswith("baseline/")})
        baseline = {k.removeprefix("baseline/"): v for k, v in metrics.items() if k.startswith("baseline/")}
        if baseline:
            # The untrained backbone is the same in every run of a model on the same test split: keep
            # one copy per cross-validation fold (None: no folds).
            zero_shot[model].setdefault(_fold(path.parent)[0], baseline)
    for model, by_fold in zero_shot.items():
        groups[RunKey(model, "zero-shot")] = list(by_fold.values())
    return dict(groups)


def summarise(groups: dict[RunKey, list[dict[str, float]]]) -> tuple[list[str], list[dict[str, object]]]:
    """Rows with mean and std per column; returns the benchmark prefixes found and the rows."""
    found = [p for p in BENCHMARK_PREFIXES if any(k.startswith(p) for runs in groups.values() for r in runs for k in r)]
    rows = []
    order = {"zero-shot": 0, "mono": 1, "cross": 2}
    for key in sorted(groups, key=lambda k: (k.model, order.get(k.sampler, 3), k.sampler)):
        runs = groups[key]
        row: dict[str, object] = {"model": key.model, "sampler": key.sampler, "runs": len(runs)}
        for prefix in found:
            for metric, _ in COLUMNS:
                values = [r[prefix + metric] for r in runs if prefix + metric in r]
                row[f"{prefix}{metric}"] = statistics.fmean(values) if values else math.nan
                row[f"{prefix}{metric} std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        for key in (ALPHA_SET, ALPHA_REALIZED):
            values = [r[key] for r in runs if key in r]
            row[key] = f"{min(values):.3f}" + (f"–{max(values):.3f}" if max(values) > min(values) else "") if values else ""
        # Runs with `interpolation=wise_ft`: the λ each seed chose on validation.
        row[LAMBDA_KEY] = ", ".join(f"{r[LAMBDA_KEY]:g}" for r in runs if LAMBDA_KEY in r)
        rows.append(row)
    return found, rows


def to_markdown(found: list[str], rows: list[dict[str, object]]) -> str:
    parts = []
    for prefix in found:
        title = prefix.rstrip("/")
        with_lambda = any(row[LAMBDA_KEY] for row in rows)
        with_alpha = any(row[ALPHA_REALIZED] for row in rows)
        header = ["model", "batches", "runs"] + (["α set", "α realized"] if with_alpha else [])
        header += (["λ"] if with_lambda else []) + [name for _, name in COLUMNS]
        lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in rows:
            cells = [str(row["model"]), str(row["sampler"]), str(row["runs"])]
            cells += [row[ALPHA_SET] or "–", row[ALPHA_REALIZED] or "–"] if with_alpha else []
            cells += [str(row[LAMBDA_KEY]) or "–"] if with_lambda else []
            for metric, _ in COLUMNS:
                mean, std = row[f"{prefix}{metric}"], row[f"{prefix}{metric} std"]
                digits = 1 if metric.endswith("lang_bias") else 3
                cells.append("–" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}" if row["runs"] > 1 else f"{mean:.{digits}f}")
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def plot(found: list[str], rows: list[dict[str, object]], path: Path) -> None:
    """Grouped bars: mono / cross / multi mAP per (model, sampler), one panel per benchmark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = ("mono/mAP", "cross/mAP", "multi/mAP")
    fig, axes = plt.subplots(1, len(found), figsize=(6 * len(found), 4), squeeze=False)
    width = 0.8 / max(len(rows), 1)
    for ax, prefix in zip(axes[0], found):
        x = np.arange(len(metrics))
        for i, row in enumerate(rows):
            means = [row[f"{prefix}{m}"] for m in metrics]
            stds = [row[f"{prefix}{m} std"] for m in metrics]
            ax.bar(x + i * width - 0.4 + width / 2, means, width, yerr=stds, capsize=3, label=f"{row['model']} / {row['sampler']}")
        ax.set_xticks(x, [m.split("/")[0] for m in metrics])
        ax.set_ylabel("mAP")
        ax.set_title(prefix.rstrip("/"))
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _summed(runs: list[dict[str, float]], prefix: str) -> dict[str, int]:
    """Per language (the key after `prefix`), the counts of all runs added up."""
    out: dict[str, int] = defaultdict(int)
    for r in runs:
        for k, v in r.items():
            if k.startswith(prefix):
                out[k.removeprefix(prefix)] += int(v)
    return dict(out)


def _spread(counts: dict[str, int]) -> str:
    if not sum(counts.values()):
        return "–"
    return f"{sum(counts.values()):,} ({min(counts.values()):,}–{max(counts.values()):,} per language)"


def composition_markdown(groups: dict[RunKey, list[dict[str, float]]]) -> str:
    """What each group of runs trained on (metrics.json's `composition/...`), summed over its runs:
    monolingual batches per language, cross-lingual rows per query and per passage language."""
    lines = []
    for key, runs in groups.items():
        if not any("composition/batches" in r for r in runs):
            continue
        batches = [int(r["composition/batches"]) for r in runs if "composition/batches" in r]
        mono, query, passage = (_summed(runs, f"composition/{part}/") for part in ("mono", "cross/query", "cross/passage"))
        lines.append(
            f"| {key.model} | {key.sampler} | {len(batches)} | {sum(batches)} ({min(batches)}–{max(batches)} per run) | "
            f"{sum(mono.values()) / max(sum(batches), 1):.3f} | "
            + (" ".join(f"{lang} {n}" for lang, n in mono.items()) if sum(mono.values()) else "–")
            + f" | {_spread(query)} | {_spread(passage)} |"
        )
    if not lines:
        return ""
    return "\n".join([
        "### Realized batch composition (summed over the runs)", "",
        "| model | batches | runs | training batches | mono share | mono batches per language | cross rows by query language | cross rows by passage language |",
        "|---|---|---|---|---|---|---|---|", *lines,
    ]) + "\n"


def write_report(sweep_dir: Path, resamples: int = 10_000) -> str:
    groups = collect(sweep_dir)
    found, rows = summarise(groups)
    if not found:
        raise ValueError(f"the runs under {sweep_dir} have no LAReQA metrics ({BENCHMARK_PREFIXES})")
    markdown = to_markdown(found, rows)
    composition = composition_markdown(groups)
    if composition:
        markdown += "\n" + composition
    (sweep_dir / "report.md").write_text(markdown)
    with (sweep_dir / "report.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(found, rows, sweep_dir / "report.png")
    with_intervals = write_uncertainty(sweep_dir, resamples)
    if with_intervals:
        markdown += "\n" + with_intervals
        (sweep_dir / "report.md").write_text(markdown)
    return markdown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hybatch.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun directory (or any folder of runs)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples of the intervals")
    args = parser.parse_args(argv)
    markdown = write_report(args.sweep_dir, args.resamples)
    print(markdown)
    extra = ", uncertainty.md, uncertainty.csv, uncertainty.png" if "### Paired differences" in markdown or "95% confidence" in markdown else ""
    print(f"wrote {args.sweep_dir / 'report.md'}, report.csv, report.png{extra}")
