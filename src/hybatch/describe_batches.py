"""Inspect what a sampler configuration produces, before spending GPU hours on it.

    python -m hybatch.describe_batches sampler=hybrid sampler.alpha=0.3 +num_batches=2000 [+world_size=4]

Takes the same data / sampler overrides as train.py; prints a table and writes
`batches.json` into the run dir.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from hybatch.config import CONFIG_DIR
from hybatch.samplers import BatchItem, ParallelBatchSampler

log = logging.getLogger(__name__)


def _slice_kind(items: Sequence[BatchItem]) -> tuple[str, tuple[str, ...]]:
    """What one rank's slice looks like: ('mono', (lang,)), ('cross', ()) or ('mixed', ())."""
    if all(i.query_lang == i.passage_lang for i in items):
        langs = tuple(sorted({i.query_lang for i in items}))
        return ("mono", langs) if len(langs) == 1 else ("mixed", ())
    if all(i.query_lang != i.passage_lang for i in items):
        return ("cross", ())
    return ("mixed", ())


def describe(samplers: Sequence[ParallelBatchSampler], num_batches: int) -> dict[str, Any]:
    """Statistics of the first `num_batches` global batches, assembled from every rank's slices.

    `samplers` are the same configuration built for ranks 0..world_size-1; epochs are chained
    until `num_batches` global batches were seen.
    """
    world_size = len(samplers)
    kinds: Counter[str] = Counter()
    mono_langs: Counter[str] = Counter()
    pairs: Counter[str] = Counter()
    datasets: Counter[str] = Counter()
    max_repeat = 0
    ranks_agree = True
    seen = 0
    epoch = 0
    while seen < num_batches:
        for s in samplers:
            s.set_epoch(epoch)
        reference = samplers[0].plan(epoch)
        for slices in zip(*(iter(s) for s in samplers)):
            planned = next(reference)
            items = [item for part in slices for item in part]
            shapes = {_slice_kind(part) for part in slices}
            ranks_agree &= len(shapes) == 1 and len({len(p) for p in slices}) == 1 and items == planned.items
            kinds[planned.kind] += 1
            datasets[planned.dataset] += 1
            if planned.kind == "mono":
                mono_langs[planned.items[0].query_lang] += 1
            else:
                pairs.update(f"{i.query_lang}-{i.passage_lang}" for i in items)
            max_repeat = max(max_repeat, max(Counter(i.example for i in items).values()))
            seen += 1
            if seen == num_batches:
                break
        if seen == 0:
            break
        epoch += 1
    return {
        "num_batches": seen,
        "epochs_spanned": epoch,
        "batches_per_epoch": len(samplers[0]),
        "global_batch_size": samplers[0].global_batch_size,
        "world_size": world_size,
        "mono_fraction": kinds["mono"] / max(seen, 1),
        "cross_fraction": kinds["cross"] / max(seen, 1),
        "mono_language_counts": dict(sorted(mono_langs.items())),
        "cross_pair_counts": dict(sorted(pairs.items())),
        "dataset_counts": dict(sorted(datasets.items())),
        "max_repeated_id_in_batch": max_repeat,
        "ranks_agree": bool(ranks_agree),
    }


def print_summary(stats: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"{stats['num_batches']} global batches of {stats['global_batch_size']} on {stats['world_size']} rank(s)")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for key in ("mono_fraction", "cross_fraction", "max_repeated_id_in_batch", "ranks_agree", "batches_per_epoch", "epochs_spanned"):
        value = stats[key]
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    for lang, n in stats["mono_language_counts"].items():
        table.add_row(f"mono batches in {lang}", str(n))
    top = sorted(stats["cross_pair_counts"].items(), key=lambda kv: -kv[1])[:10]
    for pair, n in top:
        table.add_row(f"cross pairs {pair}", str(n))
    if len(stats["cross_pair_counts"]) > len(top):
        table.add_row("distinct cross pairs", str(len(stats["cross_pair_counts"])))
    for name, n in stats["dataset_counts"].items():
        table.add_row(f"batches from {name}", str(n))
    console.print(table)


def run(cfg: DictConfig) -> dict[str, Any]:
    num_batches = int(cfg.get("num_batches", 1000))
    world_size = int(cfg.get("world_size", 1))
    datamodule = instantiate(cfg.data, sampler=instantiate(cfg.sampler), seed=cfg.seed)
    samplers = [datamodule.make_sampler("train", world_size, rank) for rank in range(world_size)]
    stats = describe(samplers, num_batches)
    print_summary(stats)
    out = Path(cfg.paths.output_dir) / "batches.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(stats, indent=2) + "\n")
    log.info("wrote %s", out)
    return stats


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
