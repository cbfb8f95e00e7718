"""Two sets of runs of one sampler, paired question by question: `python -m hybatch.report.compare`.

    python -m hybatch.report.compare <runs A> <runs B> --sampler hybrid [--label-a ...] [--label-b ...]

For a change the sweep report cannot tell apart because it is not a sampler (mined hard negatives,
another learning rate, ...): A and B are two folders of training runs over the same folds and seeds
(e.g. a cross-validation multirun with and without the change). Each side's `per_query.jsonl` rows of
`--sampler` are pooled over folds as the sweep report pools them, and A − B gets, per metric, the
paired cluster-bootstrap interval over articles and p-value of `hybatch.report.uncertainty`, the
p-values Holm-corrected over the family of the metrics printed. Prints a markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hybatch.report.sweep import collect_per_query
from hybatch.report.uncertainty import LABELS, Comparison, RunRows, holm, paired_comparisons


def runs_of(folder: Path, sampler: str) -> tuple[str, list[RunRows]]:
    """The model and the runs of `sampler` under `folder` (one model expected)."""
    groups = {key: runs for key, runs in collect_per_query(folder).items() if key[1] == sampler}
    if len(groups) != 1:
        found = sorted(f"{m}/{s}" for m, s in collect_per_query(folder))
        raise ValueError(f"{folder}: expected the runs of one model with sampler {sampler!r}, found {found}")
    (model, _), runs = next(iter(groups.items()))
    return model, runs


def compare_folders(a: Path, b: Path, sampler: str, label_a: str, label_b: str, resamples: int = 10_000) -> list[Comparison]:
    """A − B per metric, Holm-adjusted over the metrics."""
    model_a, runs_a = runs_of(a, sampler)
    model_b, runs_b = runs_of(b, sampler)
    if model_a != model_b:
        raise ValueError(f"{a} trained {model_a}, {b} trained {model_b}: not the same model")
    out = paired_comparisons(model_a, label_a, label_b, runs_a, runs_b, resamples, 0)
    tested = [c for c in out if c.diff is not None]
    for c, p in zip(tested, holm([c.diff.p_value for c in tested]), strict=True):
        c.p_holm = p
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hybatch.report.compare", description=__doc__.splitlines()[0])
    parser.add_argument("runs_a", type=Path, help="folder of the runs with the change (A)")
    parser.add_argument("runs_b", type=Path, help="folder of the runs without it (B)")
    parser.add_argument("--sampler", default="hybrid", help="the sampler whose runs are compared (default: hybrid)")
    parser.add_argument("--label-a", default="A")
    parser.add_argument("--label-b", default="B")
    parser.add_argument("--resamples", type=int, default=10_000)
    args = parser.parse_args(argv)
    comparisons = compare_folders(args.runs_a, args.runs_b, args.sampler, args.label_a, args.label_b, args.resamples)
    print(to_markdown(comparisons, args.resamples))


if __name__ == "__main__":
    main()
