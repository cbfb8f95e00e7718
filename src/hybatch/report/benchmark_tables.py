"""LAReQA and MIRACL results as files and tables: the language-pair matrix (CSV + heatmap), a
per-query-language chart, and rich tables in the paper's layout.

Plots use matplotlib's object API with the Agg canvas, so they never need a display nor change the
global backend of the caller.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.table import Table


def pair_matrix(metrics: Mapping[str, float], languages: Sequence[str], metric: str = "mAP") -> np.ndarray:
    """(query language x candidate language) values of `pair/<q>-<c>/<metric>`; NaN for a skipped pair."""
    return np.array(
        [[metrics.get(f"pair/{q}-{c}/{metric}", math.nan) for c in languages] for q in languages], dtype=np.float64
    )


def write_pair_matrix_csv(matrix: np.ndarray, languages: Sequence[str], path: Path) -> Path:
    """Rows: query language; columns: candidate language; empty cell for a skipped pair."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["query\\candidate", *languages])
        for lang, row in zip(languages, matrix, strict=True):
            writer.writerow([lang, *("" if math.isnan(v) else f"{v:.6f}" for v in row)])
    return path


def plot_pair_matrix(matrix: np.ndarray, languages: Sequence[str], path: Path, title: str) -> Path:
    """Annotated heatmap; the diagonal holds the monolingual settings."""
    size = 1.5 + 0.55 * len(languages)
    fig = Figure(figsize=(size + 1.2, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=0.0, vmax=max(1e-9, float(np.nanmax(matrix))))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(languages)), labels=languages)
    ax.set_yticks(range(len(languages)), labels=languages)
    ax.set_xlabel("candidate language")
    ax.set_ylabel("query language")
    ax.set_title(title)
    middle = float(np.nanmean(matrix))
    for i in range(len(languages)):
        for j in range(len(languages)):
            if not math.isnan(matrix[i, j]):
                colour = "black" if matrix[i, j] > middle else "white"
                ax.text(j, i, f"{matrix[i, j]:.2f}".lstrip("0"), ha="center", va="center", fontsize=7, color=colour)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_per_language(metrics: Mapping[str, float], languages: Sequence[str], path: Path, title: str) -> Path:
    """Multilingual-pool mAP and language bias per query language, the macro-average as a line."""
    fig = Figure(figsize=(max(6.0, 0.6 * len(languages) + 2), 6.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1, sharex=True)
    for ax, metric, colour, fmt in ((axes[0], "mAP", "tab:blue", ".3f"), (axes[1], "lang_bias", "tab:orange", ".1f")):
        values = [metrics.get(f"multi/{lang}/{metric}", math.nan) for lang in languages]
        bars = ax.bar(languages, values, color=colour)
        ax.bar_label(bars, fmt=f"%{fmt}", fontsize=7)
        mean = metrics.get(f"multi/{metric}")
        if mean is not None:
            ax.axhline(mean, color="black", linestyle="--", linewidth=1, label=f"macro-average {mean:{fmt}}")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_ylabel(f"multi {metric}" + (" (lower is better)" if metric == "lang_bias" else ""))
    axes[1].set_xlabel("query language")
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def write_lareqa_report(metrics: Mapping[str, float], languages: Sequence[str], out_dir: Path, name: str) -> dict[str, Path]:
    """`pair_mAP.csv`, `pair_mAP.png` and `per_language.png` in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    matrix = pair_matrix(metrics, languages)
    return {
        "pair_mAP_csv": write_pair_matrix_csv(matrix, languages, out_dir / "pair_mAP.csv"),
        "pair_mAP": plot_pair_matrix(matrix, languages, out_dir / "pair_mAP.png", f"{name}: mAP per language pair"),
        "per_language": plot_per_language(metrics, languages, out_dir / "per_language.png", f"{name}: multilingual pool"),
    }


def report_lareqa(
    results: Mapping[str, Mapping[str, float]],
    languages: Mapping[str, Sequence[str]],
    out_dir: Path,
) -> tuple[dict[str, tuple[list[str], list[list[Any]]]], dict[str, Path]]:
    """Files for each named result (`out_dir/<name>/`), plus the W&B tables and images to log."""
    tables: dict[str, tuple[list[str], list[list[Any]]]] = {}
    images: dict[str, Path] = {}
    for name, metrics in results.items():
        langs = list(languages[name])
        files = write_lareqa_report(metrics, langs, out_dir / name, name)
        images.update({f"{name}/{key}": path for key, path in files.items() if path.suffix == ".png"})
        matrix = pair_matrix(metrics, langs)
        tables[f"{name}/pair_mAP"] = (["query_lang", *langs], [[q, *row.tolist()] for q, row in zip(langs, matrix, strict=True)])
    return tables, images


LAREQA_COLUMNS = (
    ("mAP mono", "mono/mAP"),
    ("mAP cross", "cross/mAP"),
    ("mAP multi", "multi/mAP"),
    ("R@1 mono", "mono/R@1"),
    ("R@1 cross", "cross/R@1"),
    ("R@10 multi", "multi/R@10"),
    ("lang bias", "multi/lang_bias"),
)


def lareqa_table(results: Mapping[str, Mapping[str, float]], title: str = "LAReQA") -> Table:
    """One row per benchmark: mAP mono / cross / multi, R@1 / R@1 / R@10 and language bias (lower is better)."""
    table = Table(title=title)
    table.add_column("benchmark", no_wrap=True)
    for header, _ in LAREQA_COLUMNS:
        table.add_column(header, justify="right")
    for name, metrics in results.items():
        cells = []
        for _, key in LAREQA_COLUMNS:
            value = metrics.get(key, math.nan)
            cells.append("-" if math.isnan(value) else (f"{value:.1f}" if key.endswith("lang_bias") else f"{value:.3f}"))
        table.add_row(name, *cells)
    return table


def miracl_table(metrics: Mapping[str, float], languages: Sequence[str], title: str = "MIRACL") -> Table:
    """One row per language and the mean; the columns are the metrics found (nDCG@10, R@100)."""
    names = sorted({key.split("/", 1)[1] for key in metrics if key.startswith("mean/")})
    table = Table(title=title)
    table.add_column("language")
    for name in names:
        table.add_column(name, justify="right")
    for lang in (*languages, "mean"):
        table.add_row(lang, *(f"{metrics.get(f'{lang}/{name}', math.nan):.3f}" for name in names))
    return table
