"""The low-resource study's table and plot: per NTREX language, each trained model minus zero-shot.

`python -m hybatch.report.low_resource multirun/low_resource [more dirs]` reads every evaluation run
(metrics.json with `mteb/NTREXBitextMining/...` keys) under the given directories. A run evaluated a
model exported by a training run (`model.name_or_path=<train run>/model` or `ckpt_path=<train run>/
checkpoints/...`): its sampler and seed come from that training run's `.hydra`; any other run is the
zero-shot backbone. A language's score is the mean of its two directions (to and from English).
Languages are grouped as trained on (the training runs' `data.languages`), unseen high-resource, and
the 25 low-resource languages. Each group's mean change carries a 95% interval from a bootstrap over
the group's languages (the sentences are fixed: it says how much the mean depends on which languages
were chosen), and so does each difference between two samplers (paired by language). Writes
`low_resource.md`, `.csv` and `.png` into `--out`.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from hybatch.data.ntrex import FROM_ISO639_1, LOW_RESOURCE_LANGUAGES

TASK = "mteb/NTREXBitextMining/"
ZERO_SHOT = "zero-shot"
GROUPS = ("trained", "unseen", "low-resource")
MIN_LANGUAGES = 5  # languages a group needs for a bootstrap interval of its mean
_LOW_RESOURCE = {code.split("-")[0] for code in LOW_RESOURCE_LANGUAGES}


def _base(code: str) -> str:
    """ISO 639-3 base of an mteb column (`zho_Hans`) or NTREX code (`zho-CN`)."""
    return code.replace("_", "-").split("-")[0]


def _training_run(source: str | None) -> Path | None:
    """The training run a model folder or checkpoint came from: the nearest ancestor with .hydra/."""
    if not source:
        return None
    path = Path(source)
    for parent in [path, *path.parents][:3]:
        if (parent / ".hydra" / "config.yaml").is_file() and (parent / ".hydra" / "hydra.yaml").is_file():
            return parent
    return None


def run_identity(run_dir: Path) -> tuple[str, float | None, list[str]]:
    """(sampler or zero-shot, hybrid alpha, training languages as ISO 639-1) of one evaluation run."""
    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{run_dir} has metrics.json but no .hydra/config.yaml")
    cfg = OmegaConf.load(config_file)
    source = OmegaConf.select(cfg, "ckpt_path") or OmegaConf.select(cfg, "model.name_or_path")
    train_dir = _training_run(source)
    if train_dir is None:
        return ZERO_SHOT, None, []
    train_cfg = OmegaConf.load(train_dir / ".hydra" / "config.yaml")
    sampler = str(OmegaConf.load(train_dir / ".hydra" / "hydra.yaml").hydra.runtime.choices.get("sampler"))
    alpha = OmegaConf.select(train_cfg, "sampler.alpha", default=None)
    languages = list(OmegaConf.select(train_cfg, "data.languages", default=[]) or [])
    return sampler, alpha if sampler == "hybrid" else None, languages


def language_scores(metrics: dict[str, float], metric: str) -> dict[str, float]:
    """{mteb column: mean of `<column>-eng_Latn` and `eng_Latn-<column>`} (languages with both)."""
    directions: dict[str, list[float]] = defaultdict(list)
    for key, value in metrics.items():
        if not key.startswith(TASK) or not key.endswith(f"/{metric}"):
            continue
        subset = key[len(TASK) :].split("/")[0]
        if "-" not in subset:
            continue
        source, target = subset.split("-")
        if "eng_Latn" in (source, target) and source != target:
            directions[target if source == "eng_Latn" else source].append(value)
    return {column: statistics.fmean(v) for column, v in directions.items() if len(v) == 2}


def collect(run_dirs: list[Path], metric: str) -> tuple[dict[str, list[dict[str, float]]], set[str]]:
    """{sampler label: [per-language scores of each seed]} and the training languages (NTREX bases)."""
    files = sorted({f for d in run_dirs for f in d.rglob("metrics.json")})
    runs = []
    for path in files:
        scores = language_scores(json.loads(path.read_text()), metric)
        if scores:
            runs.append((*run_identity(path.parent), scores))
    alphas = {alpha for _, alpha, _, _ in runs if alpha is not None}
    groups: dict[str, list[dict[str, float]]] = defaultdict(list)
    trained: set[str] = set()
    for sampler, alpha, languages, scores in runs:
        # Seeds are the repeats; hybrid runs are told apart by alpha only when it varies.
        groups[f"{sampler} (alpha={alpha:g})" if alpha is not None and len(alphas) > 1 else sampler].append(scores)
        trained |= {_base(FROM_ISO639_1.get(code, code)) for code in languages}
    if ZERO_SHOT not in groups:
        raise FileNotFoundError(f"no zero-shot NTREX run under {[str(d) for d in run_dirs]}: run `python evaluate.py +experiment=low_resource`")
    return dict(groups), trained


def group_of(column: str, trained: set[str]) -> str:
    base = _base(column)
    if base in trained:
        return "trained"
    return "low-resource" if base in _LOW_RESOURCE else "unseen"


def table(groups: dict[str, list[dict[str, float]]], trained: set[str]) -> tuple[list[str], list[dict[str, object]]]:
    """Samplers in order, and one row per language: zero-shot score, then per sampler the mean and
    standard deviation over seeds of (trained - zero-shot); group-mean rows close each group."""
    # One zero-shot run is the usual case; several (e.g. seeds) are averaged.
    languages = set().union(*groups[ZERO_SHOT])
    zero_shot = {c: statistics.fmean(run[c] for run in groups[ZERO_SHOT] if c in run) for c in languages}
    order = {"mono": 0, "cross": 1}
    samplers = sorted((s for s in groups if s != ZERO_SHOT), key=lambda s: (order.get(s, 2), s))
    rows: list[dict[str, object]] = []
    for group in GROUPS:
        columns = sorted((c for c in zero_shot if group_of(c, trained) == group), key=lambda c: -zero_shot[c])
        if not columns:
            continue
        group_rows = []
        for column in columns:
            row: dict[str, object] = {"language": column, "group": group, ZERO_SHOT: zero_shot[column]}
            for sampler in samplers:
                deltas = [run[column] - zero_shot[column] for run in groups[sampler] if column in run]
                row[sampler] = statistics.fmean(deltas) if deltas else float("nan")
                row[f"{sampler} std"] = statistics.stdev(deltas) if len(deltas) > 1 else float("nan")
                row[f"{sampler} n"] = len(deltas)
            group_rows.append(row)
        mean_row: dict[str, object] = {"language": f"mean ({len(columns)})", "group": group}
        for key in [ZERO_SHOT, *samplers]:
            mean_row[key] = statistics.fmean(float(r[key]) for r in group_rows)  # type: ignore[arg-type]
        for sampler in samplers:
            mean_row[f"{sampler} ci"] = mean_interval([float(r[sampler]) for r in group_rows])  # type: ignore[arg-type]
        rows += [*group_rows, mean_row]
    return samplers, rows


def mean_interval(values: list[float], resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of `values` over resamples of them; NaN with fewer than
    `MIN_LANGUAGES` values, where resampling says nothing (two values give their own range)."""
    x = np.asarray([v for v in values if v == v], dtype=float)
    if len(x) < MIN_LANGUAGES:
        return float("nan"), float("nan")
    means = x[np.random.default_rng(seed).integers(0, len(x), (resamples, len(x)))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def sampler_differences(samplers: list[str], rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Per group, every later sampler minus every earlier one (hybrid - mono, hybrid - cross, cross -
    mono): the mean over the group's languages of the paired difference, with its interval."""
    out = []
    for group in GROUPS:
        languages = [r for r in rows if r["group"] == group and not str(r["language"]).startswith("mean")]
        for i, a in enumerate(samplers):
            for b in samplers[:i]:
                diffs = [float(r[a]) - float(r[b]) for r in languages]  # type: ignore[arg-type]
                diffs = [d for d in diffs if d == d]
                if diffs:
                    low, high = mean_interval(diffs)
                    out.append({"group": group, "difference": f"{a} − {b}", "languages": len(diffs),
                                "mean": statistics.fmean(diffs), "ci_low": low, "ci_high": high})
    return out


def to_markdown(samplers: list[str], rows: list[dict[str, object]], metric: str) -> str:
    header = ["language", "group", f"zero-shot {metric}", *[f"{s} Δ" for s in samplers]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row["language"]), str(row["group"]), f"{row[ZERO_SHOT]:.3f}"]
        for s in samplers:
            std, ci = row.get(f"{s} std"), row.get(f"{s} ci")
            spread = f" ± {std:.3f}" if isinstance(std, float) and std == std else ""
            interval = f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if isinstance(ci, tuple) and ci[0] == ci[0] else ""
            cells.append(f"{row[s]:+.3f}{spread}{interval}")
        lines.append("| " + " | ".join(cells) + " |")
    differences = sampler_differences(samplers, rows)
    if differences:
        lines += ["", f"Between samplers (paired by language; 95% interval over the group's languages), {metric}:", "",
                  "| group | difference | languages | mean | 95% CI | reading |", "|---|---|---|---|---|---|"]
        for d in differences:
            low, high = float(d["ci_low"]), float(d["ci_high"])  # type: ignore[arg-type]
            if low != low:
                interval, reading = "–", f"fewer than {MIN_LANGUAGES} languages: no interval"
            else:
                interval = f"[{low:+.3f}, {high:+.3f}]"
                reading = "no difference measured" if low <= 0 <= high else f"{str(d['difference']).split(' ')[0]} {'higher' if low > 0 else 'lower'}"
            lines.append(f"| {d['group']} | {d['difference']} | {d['languages']} | {float(d['mean']):+.3f} | {interval} | {reading} |")  # type: ignore[arg-type]
    return "\n".join(lines) + "\n"


def plot(samplers: list[str], rows: list[dict[str, object]], metric: str, path: Path) -> None:
    """Horizontal bars per language: each sampler's change over zero-shot; groups separated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    languages = [r for r in rows if not str(r["language"]).startswith("mean")]
    height = max(3.0, 0.28 * len(languages) * max(1, len(samplers)) ** 0.5 + 1)
    fig, ax = plt.subplots(figsize=(7, height))
    width = 0.8 / max(1, len(samplers))
    for i, sampler in enumerate(samplers):
        ys = [j + i * width for j in range(len(languages))]
        ax.barh(ys, [float(r[sampler]) for r in languages], height=width, label=sampler)
    ax.set_yticks([j + 0.4 - width / 2 for j in range(len(languages))])
    ax.set_yticklabels([f"{r['language']} ({r['group']})" for r in languages], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"NTREX bitext mining {metric}: trained minus zero-shot (mean of both directions)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(run_dirs: list[Path], out: Path, metric: str = "f1") -> str:
    groups, trained = collect(run_dirs, metric)
    samplers, rows = table(groups, trained)
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(samplers, rows, metric)
    (out / "low_resource.md").write_text(markdown)
    with (out / "low_resource.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    plot(samplers, rows, metric, out / "low_resource.png")
    return markdown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="directories holding the evaluation runs (searched recursively)")
    parser.add_argument("--out", type=Path, default=None, help="where the report goes (default: the first directory)")
    parser.add_argument("--metric", default="f1", help="f1 (mteb's main score) | accuracy | precision | recall")
    args = parser.parse_args(argv)
    print(write_report(args.run_dirs, args.out or args.run_dirs[0], args.metric))


if __name__ == "__main__":
    main()
