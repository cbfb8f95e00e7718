"""Validation and test loss batches, planned once from the held-out data whatever the training sampler.

The validation loss chooses the checkpoint and stops training early, so it must be the same
criterion for every sampler: were it computed on batches of the training sampler, a monolingual run
would be selected on a monolingual loss and a cross-lingual run on a cross-lingual one. The plan is
a function of the held-out data, the languages, the kind, the batch size, the device count and its
own seed only (not the run's seed, not the sampler, not alpha), so runs that differ in those alone
are selected on the same batches (`<run dir>/val_batches.json` lists them). Kinds:

* ``en_mono`` (default): monolingual English batches, every example once (the paper early-stops on
  the loss of an English held-out set); without English in the data, as ``mono``;
* ``mono``: monolingual batches in every language, every (example, language) once;
* ``cross``: every example once per language, each time with a random ordered pair of two of its
  languages (query language != passage language).

Every global batch holds ``batch_size * world_size`` pairs of one dataset and language (``mono``) or
dataset (``cross``), no example twice; the last batch of each is smaller (a multiple of the device
count; the fewer than ``world_size`` examples left over are not used, and counted in the log). Under
DDP every rank takes its slice of each planned global batch, as the training samplers do.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from hybatch.atomic import atomic_write_text
from hybatch.data.corpus import CorpusError, ParallelCorpus
from hybatch.samplers import BatchItem, PlannedBatch

log = logging.getLogger(__name__)

KINDS = ("en_mono", "mono", "cross")


@dataclass(frozen=True)
class HeldOutBatchConfig:
    """`data.val_batches`: the kind of loss batches, their per-device size (None: `data.batch_size`) and seed."""

    kind: str = "en_mono"
    batch_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"data.val_batches.kind={self.kind!r}: expected one of {KINDS}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"data.val_batches.batch_size={self.batch_size}: expected >= 1 or null")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | HeldOutBatchConfig | None) -> HeldOutBatchConfig:
        if config is None:
            return cls()
        if isinstance(config, HeldOutBatchConfig):
            return config
        unknown = set(config) - {"kind", "batch_size", "seed"}
        if unknown:
            raise ValueError(f"data.val_batches has unknown keys {sorted(unknown)}; expected kind, batch_size, seed")
        return cls(**dict(config))


@dataclass(frozen=True)
class HeldOutPlan:
    """The planned global batches of one held-out split and what they were planned from."""

    split: str
    config: HeldOutBatchConfig
    languages: tuple[str, ...]
    global_batch_size: int
    world_size: int
    batches: list[PlannedBatch]
    left_out: int

    def to_json(self, corpus: ParallelCorpus) -> dict[str, Any]:
        """What `val_batches.json` holds: the settings and, per batch, its dataset, kind, languages and example ids."""
        return {
            "split": self.split,
            "kind": self.config.kind,
            "seed": self.config.seed,
            "languages": list(self.languages),
            "global_batch_size": self.global_batch_size,
            "world_size": self.world_size,
            "num_batches": len(self.batches),
            "num_pairs": sum(len(b.items) for b in self.batches),
            "left_out": self.left_out,
            "batches": [
                {
                    "dataset": b.dataset,
                    "kind": b.kind,
                    "query_langs": [it.query_lang for it in b.items],
                    "passage_langs": [it.passage_lang for it in b.items],
                    "ids": [corpus[it.example].id for it in b.items],
                }
                for b in self.batches
            ],
        }

    def write(self, path: str | Path, corpus: ParallelCorpus) -> None:
        """Write the plan as JSON, atomically (every rank of a run may write the same file)."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_json(corpus), indent=1) + "\n")


def _cut(ids: np.ndarray, global_batch: int, world_size: int) -> tuple[list[np.ndarray], int]:
    """Consecutive batches of `global_batch` ids, then one smaller batch rounded down to the device count."""
    full = len(ids) // global_batch
    chunks = [ids[i * global_batch : (i + 1) * global_batch] for i in range(full)]
    rest = ids[full * global_batch :]
    usable = len(rest) // world_size * world_size
    if usable:
        chunks.append(rest[:usable])
    return chunks, len(rest) - usable


def plan_held_out_batches(
    corpus: ParallelCorpus,
    languages: Sequence[str],
    config: HeldOutBatchConfig,
    batch_size: int,
    world_size: int = 1,
    split: str = "val",
) -> HeldOutPlan:
    """The loss batches of a held-out split: `languages` are the configured training languages, of
    which those the split has are used; `batch_size` is per device (`config.batch_size` overrides it)."""
    present = corpus.languages()
    langs = [lang for lang in languages if lang in present]
    if not langs:
        raise CorpusError(
            f"the {split} data has none of the languages {list(languages)} (data.languages); it has {sorted(present)}"
        )
    kind = config.kind
    if kind == "en_mono":
        if "en" in langs:
            langs = ["en"]
        else:
            log.warning("data.val_batches.kind=en_mono, but the %s data has no English: monolingual batches in %s", split, langs)
        kind = "mono"
    if kind == "cross" and len(langs) < 2:
        raise CorpusError(
            f"data.val_batches.kind=cross needs two languages in the {split} data, which has only {langs} of "
            f"data.languages; use data.val_batches.kind=en_mono or mono"
        )
    global_batch = (config.batch_size or batch_size) * world_size
    by_dataset: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(corpus.examples):
        by_dataset[ex.dataset].append(i)

    batches: list[PlannedBatch] = []
    left_out = 0
    for d, name in enumerate(sorted(by_dataset)):
        indices = by_dataset[name]
        if kind == "mono":
            for li, lang in enumerate(langs):
                ids = np.array([i for i in indices if lang in corpus[i].translations], dtype=np.int64)
                rng = np.random.default_rng([config.seed, d, li])
                chunks, dropped = _cut(rng.permutation(ids), global_batch, world_size)
                left_out += dropped
                batches += [PlannedBatch("mono", name, [BatchItem(int(i), lang, lang) for i in c]) for c in chunks]
            continue
        available = {i: [lang for lang in langs if lang in corpus[i].translations] for i in indices}
        ids = np.array([i for i in indices if len(available[i]) >= 2], dtype=np.int64)
        for r in range(len(langs)):
            rng = np.random.default_rng([config.seed, d, len(langs) + r])
            chunks, dropped = _cut(rng.permutation(ids), global_batch, world_size)
            left_out += dropped
            for chunk in chunks:
                items = []
                for i in chunk:
                    q, p = rng.choice(len(available[int(i)]), size=2, replace=False)
                    items.append(BatchItem(int(i), available[int(i)][q], available[int(i)][p]))
                batches.append(PlannedBatch("cross", name, items))
    if not batches:
        raise CorpusError(
            f"the {split} split has no loss batch: fewer examples in {langs} than the {world_size} device(s)"
        )
    if left_out:
        log.info("%s loss batches leave out %d pairs (fewer than the %d devices at the end of a dataset)", split, left_out, world_size)
    return HeldOutPlan(split, config, tuple(langs), global_batch, world_size, batches, left_out)


class PlannedBatchSampler(Sampler[list[BatchItem]]):
    """Yields this rank's slice of every planned global batch, the same batches every epoch.

    It has no `sampler` attribute and no `set_epoch`: Lightning finds nothing to reshuffle.
    """

    def __init__(self, plan: HeldOutPlan, rank: int = 0) -> None:
        if not 0 <= rank < plan.world_size:
            raise ValueError(f"rank {rank} of a plan for {plan.world_size} device(s)")
        self.plan = plan
        self.rank = rank

    def __len__(self) -> int:
        return len(self.plan.batches)

    def __iter__(self) -> Iterator[list[BatchItem]]:
        for batch in self.plan.batches:
            local = len(batch.items) // self.plan.world_size
            yield batch.items[self.rank * local : (self.rank + 1) * local]
