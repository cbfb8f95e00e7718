"""Sets of runs of one sampler, paired question by question: `python -m hybatch.report.compare`.

    python -m hybatch.report.compare <runs A> <runs B> [<runs C> ...] --sampler hybrid [--labels A B C]

For a change the sweep report cannot tell apart because it is not a sampler (mined hard negatives,
another learning rate, ...): each folder holds training runs over the same folds (e.g. a
cross-validation multirun with one setting; seeds are paired on those both folders have). Each
folder's `per_query.jsonl` rows of `--sampler` are pooled over folds as the sweep report pools them,
and every pair, earlier folder − later folder, gets per metric the paired cluster-bootstrap interval
over articles and p-value of `hybatch.report.uncertainty`. The p-values are Holm-corrected over the
whole family printed (pairs x metrics). Prints a markdown table.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

from hybatch.report.sweep import collect_per_query
from hybatch.report.uncertainty import (
    FOREST_LEGEND,
    LABELS,
    Comparison,
    RunRows,
    adjust_family,
    draw_forest,
    paired_comparisons,
)


def runs_of(folder: Path, sampler: str, seeds: Sequence[int] | None = None) -> tuple[str, list[RunRows]]:
    """The model and the runs of `sampler` under `folder` (one model expected), of `seeds` only if given."""
    every = collect_per_query(folder)
    groups = {}
    for key, runs in every.items():
        kept = [r for r in runs if seeds is None or r.seed in seeds]
        if key[1] == sampler and kept:
            groups[key] = kept
    if len(groups) != 1:
        found = sorted(f"{m}/{s}" for m, s in every)
        of_seeds = "" if seeds is None else f" and seed in {list(seeds)}"
        raise ValueError(f"{folder}: expected the runs of one model with sampler {sampler!r}{of_seeds}, found {found}")
    (model, _), runs = next(iter(groups.items()))
    return model, runs


def compare_folders(
    folders: Sequence[Path], labels: Sequence[str], sampler: str, resamples: int = 10_000, seeds: Sequence[int] | None = None
) -> list[Comparison]:
    """Every pair, earlier − later, per metric; Holm-adjusted over all of them. `seeds`: only those runs."""
    if len(folders) < 2 or len(labels) != len(folders) or len(set(labels)) != len(labels):
        raise ValueError(f"expected two or more folders with as many distinct labels, got {len(folders)} folders and labels {list(labels)}")
    runs = [runs_of(folder, sampler, seeds) for folder in folders]
    models = {model for model, _ in runs}
    if len(models) != 1:
        trained = ", ".join(f"{folder}: {model}" for folder, (model, _) in zip(folders, runs, strict=True))
        raise ValueError(f"not the same model: {trained}")
    out = []
    for (i, (model, runs_a)), (j, (_, runs_b)) in combinations(enumerate(runs), 2):
        out += paired_comparisons(model, labels[i], labels[j], runs_a, runs_b, resamples, 0)
    adjust_family(out)
    return out


def to_markdown(comparisons: list[Comparison], resamples: int) -> str:
    lines = [f"Paired by question; 95% cluster-bootstrap intervals over articles ({resamples:,} resamples); "
             f"p Holm-adjusted over these {sum(c.diff is not None for c in comparisons)} tests.", "",
             "| benchmark | difference | metric | value | 95% CI | p | p (Holm) | reading |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in comparisons:
        if c.diff is None:
            lines.append(f"| – | {c.a} − {c.b} | – | – | – | – | – | {c.note} |")
            continue
        d, fmt = c.diff, (lambda x: f"{x:+.1f}") if c.metric.endswith("lang_bias") else (lambda x: f"{x:+.3f}")
        lines.append(f"| {c.benchmark} | {c.a} − {c.b} | {LABELS[c.metric]} | {fmt(d.value)} | [{fmt(d.low)}, {fmt(d.high)}] | "
                     f"{d.p_value:.4f} | {c.p_holm:.4f} | {c.reading()} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(comparisons: Sequence[Comparison], path: Path) -> None:
    """Forest plots of the differences: mAP on the left, language bias (its own scale) on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = [c for c in comparisons if c.metric.endswith("mAP")]
    bias = [c for c in comparisons if c.metric.endswith("lang_bias")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.2 + 0.3 * max(len(maps), len(bias))))
    draw_forest(axes[0], maps, "paired mAP difference (95% CI)")
    draw_forest(axes[1], bias, "paired language-bias difference (95% CI; lower is better)")
    fig.suptitle(FOREST_LEGEND, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hybatch.report.compare", description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="two or more folders of runs, one setting each")
    parser.add_argument("--sampler", default="hybrid", help="the sampler whose runs are compared (default: hybrid)")
    parser.add_argument("--labels", nargs="+", help="a name per folder, in order (default: A, B, C, ...)")
    parser.add_argument("--seeds", type=int, nargs="+", help="only the runs of these seeds (default: all, paired on common ones)")
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--plot", type=Path, help="also draw the differences as forest plots into this PNG file")
    args = parser.parse_args(argv)
    labels = args.labels or [chr(ord("A") + i) for i in range(len(args.runs))]
    comparisons = compare_folders(args.runs, labels, args.sampler, args.resamples, args.seeds)
    print(to_markdown(comparisons, args.resamples))
    if args.plot:
        plot(comparisons, args.plot)


if __name__ == "__main__":
    main()
