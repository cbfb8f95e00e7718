"""Batch samplers that decide the language composition of every training batch.

The paper's three strategies differ only in how a batch is composed:

* monolingual ("X-X-mono"): one language for the whole batch, queries and passages alike;
* cross-lingual ("X-Y"): every pair has query language != passage language;
* hybrid: a fraction ``alpha`` of the batches monolingual, the others cross-lingual. A dataset in
  one language only (the paper's English-only sets) gives monolingual batches only; the
  cross-lingual sampler refuses such a dataset.

What an epoch is: every dataset's example ids are shuffled (seeded by ``(seed, epoch)``) and cut
into GLOBAL batches of ``batch_size * world_size`` ids; each id is used once per epoch, in the
language or language pair its batch drew. The ``len(ids) % global_batch`` ids left over (a
different subset every epoch) are not used that epoch; their count is logged. Batches of all
datasets are then shuffled together, so each dataset contributes in proportion to its size
(``dataset_weights`` draws the dataset of each batch from fixed weights instead).

How types and languages are given out (``schedule``):

* ``balanced`` (default): per dataset, the monolingual batches of the run so far number
  ``round(alpha * batches so far)`` at every epoch's end (the rounding remainder carries into the
  next epoch), at positions of the epoch shuffled by the seeded generator. Their languages, and
  the query and passage languages of the cross-lingual rows (``pair_mode=example``) or batches
  (``pair_mode=batch``), come from the sequences of `hybatch.allocation`, which keep every
  language within one batch (one row) of its share in any run length.
* ``bernoulli``: each batch is monolingual with probability ``alpha``, its languages drawn
  independently (the paper's literal reading); a short run can stray far from ``alpha``.

Every random choice is drawn from a generator keyed by the seed and ``(epoch, batch or dataset,
purpose)``: the plan is a pure function of those numbers, so all ranks of a distributed run
compute the same global batch and take their own slice, a run resumes mid-epoch from two integers,
and the hybrid sampler with alpha=1 (alpha=0) reproduces the monolingual (cross-lingual) sampler
exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
from torch.utils.data import Sampler

from hybatch.allocation import ApportionedSequence, CrossPairSequence
from hybatch.data.corpus import DatasetGroup

log = logging.getLogger(__name__)

BatchKind = Literal["mono", "cross"]
_ORDER, _KIND, _MONO, _CROSS, _LANG_ORDER, _SHIFTS = range(6)
SCHEDULES = ("balanced", "bernoulli")


class SamplerConfigError(ValueError):
    """A sampler was configured with values it cannot honour."""


class BatchItem(NamedTuple):
    """One training pair: which example, in which query and passage language."""

    example: int
    query_lang: str
    passage_lang: str


@dataclass(frozen=True)
class PlannedBatch:
    """A global batch: its type, dataset and every (example, query language, passage language)."""

    kind: BatchKind
    dataset: str
    items: list[BatchItem]


def language_weights(group: DatasetGroup, weighting: str, language_temperature: float) -> np.ndarray:
    """Sampling probabilities of a dataset's languages.

    ``size`` and ``temperature`` weight a language by its example count n as n**(1/T) (T=1 for
    ``size``, T=`language_temperature` for ``temperature``), the usual multilingual up-sampling of
    small languages.
    """
    if weighting == "uniform":
        return np.full(len(group.languages), 1.0 / len(group.languages))
    if weighting not in ("size", "temperature"):
        raise SamplerConfigError(f"sampler.language_weighting={weighting!r}: expected uniform, size or temperature")
    if language_temperature <= 0:
        raise SamplerConfigError(f"sampler.language_temperature={language_temperature}: expected > 0")
    t = 1.0 if weighting == "size" else language_temperature
    counts = np.array([group.language_counts.get(lang, len(group.examples)) for lang in group.languages], dtype=float)
    w = counts ** (1.0 / t)
    return w / w.sum()


class ParallelBatchSampler(Sampler[list[BatchItem]]):
    """Yields this rank's slice of each planned global batch as a list of `BatchItem`.

    `alpha` is the fraction of monolingual batches (1: monolingual sampler, 0: cross-lingual).
    Use with ``DataLoader(batch_sampler=...)`` and Lightning's ``use_distributed_sampler=False``.
    """

    def __init__(
        self,
        groups: Mapping[str, DatasetGroup],
        batch_size: int,
        alpha: float,
        seed: int = 0,
        world_size: int = 1,
        rank: int = 0,
        language_weighting: str = "uniform",
        language_temperature: float = 1.0,
        pair_mode: Literal["example", "batch"] = "example",
        dataset_weights: Mapping[str, float] | None = None,
        schedule: Literal["balanced", "bernoulli"] = "balanced",
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise SamplerConfigError(f"sampler.alpha={alpha}: expected a fraction in [0, 1]")
        if batch_size < 1:
            raise SamplerConfigError(f"data.batch_size={batch_size}: expected >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise SamplerConfigError(f"rank {rank} / world size {world_size}: expected 0 <= rank < world_size")
        if pair_mode not in ("example", "batch"):
            raise SamplerConfigError(f"sampler.pair_mode={pair_mode!r}: expected 'example' or 'batch'")
        if schedule not in SCHEDULES:
            raise SamplerConfigError(f"sampler.schedule={schedule!r}: expected one of {SCHEDULES}")
        if not groups:
            raise SamplerConfigError("no training datasets were given to the sampler")
        self.alpha = float(alpha)
        self.schedule = schedule
        self.groups = dict(sorted(groups.items()))
        self.batch_size = batch_size
        self.global_batch_size = batch_size * world_size
        self.seed = seed
        self.world_size = world_size
        self.rank = rank
        self.pair_mode = pair_mode
        for name, group in self.groups.items():
            if len(group.examples) < self.global_batch_size:
                raise SamplerConfigError(
                    f"dataset {name!r} has {len(group.examples)} examples, fewer than one global batch "
                    f"(data.batch_size={batch_size} x world size {world_size}); lower data.batch_size"
                )
            if not group.languages:
                raise SamplerConfigError(f"dataset {name!r} has no training language")
            # A one-language dataset (English-only sets of the paper's mixture) gives monolingual
            # batches only; a sampler that never draws those cannot use it.
            if len(group.languages) < 2 and self.alpha == 0:
                raise SamplerConfigError(
                    f"{type(self).__name__} draws only cross-lingual batches, but dataset {name!r} has only the "
                    f"language {list(group.languages)}; leave it out of data.source.train (or data.languages), "
                    f"or use sampler=hybrid with alpha > 0, where a one-language dataset gives monolingual batches"
                )
        self._weights = {
            name: language_weights(g, language_weighting, language_temperature) for name, g in self.groups.items()
        }
        self.dataset_weights = self._normalise_dataset_weights(dataset_weights)
        self.epoch = 0
        self._next_batch = 0
        self._plan_cache: tuple[int, list[PlannedBatch]] | None = None
        self._batches_per_epoch: dict[int, dict[str, int]] = {}
        self._mono_langs: dict[str, ApportionedSequence] = {}
        self._cross_pairs: dict[str, CrossPairSequence] = {}
        if self.dataset_weights is None:
            dropped = {n: len(g.examples) % self.global_batch_size for n, g in self.groups.items()}
            if any(dropped.values()):
                log.info("each epoch leaves out %s example ids (incomplete last global batch, reshuffled every epoch)", dropped)
        else:
            # Batches drawn by weight over- or under-sample a dataset: say what epoch 0 does with each.
            rows: dict[str, int] = dict.fromkeys(self.groups, 0)
            distinct: dict[str, set[int]] = {n: set() for n in self.groups}
            for name, ids in self.epoch_chunks(0):
                rows[name] += len(ids)
                distinct[name].update(ids.tolist())
            log.info(
                "sampler.dataset_weights: epoch 0 uses, per dataset, (rows, distinct ids, ids of the dataset): %s; "
                "ids beyond a dataset's rows are left out, rows beyond its ids repeat ids across batches",
                {n: (rows[n], len(distinct[n]), len(g.examples)) for n, g in self.groups.items()},
            )

    # --- the plan ---------------------------------------------------------------------------
    def _normalise_dataset_weights(self, weights: Mapping[str, float] | None) -> dict[str, float] | None:
        if weights is None:
            return None
        unknown = set(weights) - set(self.groups)
        missing = set(self.groups) - set(weights)
        if unknown or missing:
            raise SamplerConfigError(
                f"sampler.dataset_weights: unknown datasets {sorted(unknown)}, missing {sorted(missing)}; "
                f"datasets are {sorted(self.groups)}"
            )
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise SamplerConfigError(f"sampler.dataset_weights={dict(weights)}: expected non-negative, not all zero")
        total = sum(weights.values())
        return {name: weights[name] / total for name in self.groups}

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *key])

    def __len__(self) -> int:
        """Global batches per epoch (the same on every rank)."""
        return sum(len(g.examples) // self.global_batch_size for g in self.groups.values())

    def _dataset_draws(self, rng: np.random.Generator) -> np.ndarray:
        names = list(self.groups)
        return rng.choice(len(names), size=len(self), p=[self.dataset_weights[n] for n in names])

    def epoch_chunks(self, epoch: int) -> list[tuple[str, np.ndarray]]:
        """The dataset and example ids of every global batch of an epoch, in order."""
        rng = self._rng(epoch, 0, _ORDER)
        g = self.global_batch_size
        if self.dataset_weights is None:
            chunks = []
            for name, group in self.groups.items():
                perm = rng.permutation(np.asarray(group.examples))
                chunks += [(name, perm[i * g : (i + 1) * g]) for i in range(len(perm) // g)]
            return [chunks[i] for i in rng.permutation(len(chunks))]
        names = list(self.groups)
        pools: dict[str, np.ndarray] = {}
        cursor: dict[str, int] = {}
        chunks = []
        for d in self._dataset_draws(rng):
            name = names[d]
            if name not in pools or cursor[name] + g > len(pools[name]):
                # A fresh permutation rather than wrapping around: no id twice in one batch.
                pools[name] = rng.permutation(np.asarray(self.groups[name].examples))
                cursor[name] = 0
            chunks.append((name, pools[name][cursor[name] : cursor[name] + g]))
            cursor[name] += g
        return chunks

    def plan_epoch(self, epoch: int) -> list[PlannedBatch]:
        """Every global batch of an epoch (the last epoch planned is kept)."""
        if self._plan_cache is None or self._plan_cache[0] != epoch:
            chunks = self.epoch_chunks(epoch)
            if self.schedule == "bernoulli":
                batches = [self._draw_batch(epoch, i, name, ids) for i, (name, ids) in enumerate(chunks)]
            else:
                batches = self._balanced_epoch(epoch, chunks)
            self._plan_cache = (epoch, batches)
        return self._plan_cache[1]

    def plan(self, epoch: int) -> Iterator[PlannedBatch]:
        """Every global batch of an epoch, in order."""
        yield from self.plan_epoch(epoch)

    def _items(self, kind: BatchKind, dataset: str, ids: np.ndarray, q: np.ndarray, p: np.ndarray) -> PlannedBatch:
        langs = self.groups[dataset].languages
        return PlannedBatch(kind, dataset, [BatchItem(int(i), langs[a], langs[b]) for i, a, b in zip(ids, q, p)])

    # --- bernoulli: an independent draw per batch ---------------------------------------------
    def _draw_batch(self, epoch: int, index: int, dataset: str, ids: np.ndarray) -> PlannedBatch:
        langs = list(self.groups[dataset].languages)
        weights = self._weights[dataset]
        mono = len(langs) < 2 or self._rng(epoch, index, _KIND).random() < self.alpha
        if mono:
            lang = self._rng(epoch, index, _MONO).choice(len(langs), p=weights)
            return self._items("mono", dataset, ids, np.full(len(ids), lang), np.full(len(ids), lang))
        rng = self._rng(epoch, index, _CROSS)
        n = 1 if self.pair_mode == "batch" else len(ids)
        q = rng.choice(len(langs), size=n, p=weights)
        p = np.empty_like(q)
        for j, qi in enumerate(q):
            # The passage language from the same weights, renormalised without the query's.
            w = weights.copy()
            w[qi] = 0.0
            p[j] = rng.choice(len(langs), p=w / w.sum())
        if self.pair_mode == "batch":
            q, p = np.repeat(q, len(ids)), np.repeat(p, len(ids))
        return self._items("cross", dataset, ids, q, p)

    # --- balanced: counts fixed per epoch, languages from low-discrepancy sequences ------------
    def _dataset_batches(self, epoch: int) -> dict[str, int]:
        """Global batches of each dataset in `epoch`."""
        if self.dataset_weights is None:
            return {n: len(g.examples) // self.global_batch_size for n, g in self.groups.items()}
        if epoch not in self._batches_per_epoch:
            # The same first draw as `epoch_chunks` makes from the same generator.
            draws = np.bincount(self._dataset_draws(self._rng(epoch, 0, _ORDER)), minlength=len(self.groups))
            self._batches_per_epoch[epoch] = dict(zip(self.groups, draws.tolist()))
        return self._batches_per_epoch[epoch]

    def mono_batches_through(self, dataset: str, batches: int) -> int:
        """Monolingual batches among a dataset's first `batches` (alpha x batches, half rounded up)."""
        if len(self.groups[dataset].languages) < 2 or self.alpha == 1.0:
            return batches
        return math.floor(self.alpha * batches + 0.5)

    def _sequences(self, k: int, dataset: str) -> tuple[ApportionedSequence, CrossPairSequence | None]:
        if dataset not in self._mono_langs:
            weights = self._weights[dataset]
            order = self._rng(k, 0, _LANG_ORDER).permutation(len(weights))
            self._mono_langs[dataset] = ApportionedSequence(weights, order)
            if len(weights) > 1:
                shifts = lambda round_: self._rng(k, round_, _SHIFTS).permutation(len(weights) - 1)  # noqa: E731
                self._cross_pairs[dataset] = CrossPairSequence(weights, order, shifts)
        return self._mono_langs[dataset], self._cross_pairs.get(dataset)

    def _balanced_epoch(self, epoch: int, chunks: list[tuple[str, np.ndarray]]) -> list[PlannedBatch]:
        batches: list[PlannedBatch | None] = [None] * len(chunks)
        unit = 1 if self.pair_mode == "batch" else self.global_batch_size
        for k, dataset in enumerate(self.groups):
            positions = [i for i, (name, _) in enumerate(chunks) if name == dataset]
            if not positions:
                continue
            before = sum(self._dataset_batches(e)[dataset] for e in range(epoch))
            m0 = self.mono_batches_through(dataset, before)
            m1 = self.mono_batches_through(dataset, before + len(positions))
            rng = self._rng(epoch, k, _KIND)
            mono_at = set(rng.choice(len(positions), size=m1 - m0, replace=False).tolist())
            mono_seq, cross_seq = self._sequences(k, dataset)
            # The epoch's share of the language sequence, handed to its monolingual batches in random order.
            mono_langs = iter(rng.permutation(mono_seq.take(m0, m1)))
            row = (before - m0) * unit
            for j, i in enumerate(positions):
                ids = chunks[i][1]
                if j in mono_at:
                    lang = next(mono_langs)
                    batches[i] = self._items("mono", dataset, ids, np.full(len(ids), lang), np.full(len(ids), lang))
                    continue
                q, p = cross_seq.take(row, row + unit)
                row += unit
                if unit == 1:
                    q, p = np.repeat(q, len(ids)), np.repeat(p, len(ids))
                batches[i] = self._items("cross", dataset, ids, q, p)
        return batches

    # --- iteration ----------------------------------------------------------------------------
    def local_slice(self, batch: PlannedBatch) -> list[BatchItem]:
        return batch.items[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __iter__(self) -> Iterator[list[BatchItem]]:
        epoch, start = self.epoch, self._next_batch
        batches = self.plan_epoch(epoch)
        for index in range(start, len(batches)):
            self._next_batch = index + 1
            yield self.local_slice(batches[index])
        self._next_batch = 0

    # --- epochs and resumption --------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning; announcing the current epoch again keeps the position."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._next_batch = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "next_batch": self._next_batch,
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where `state` left off; refuses a state from a different global batch."""
        for key in ("seed", "global_batch_size", "world_size"):
            if state[key] != getattr(self, key):
                raise SamplerConfigError(
                    f"cannot resume the batch sampler: the checkpoint has {key}={state[key]}, this run "
                    f"{getattr(self, key)}; resume with the same seed, data.batch_size and number of devices"
                )
        self.epoch = int(state["epoch"])
        self._next_batch = int(state["next_batch"])


class MonolingualBatchSampler(ParallelBatchSampler):
    """Every batch in one language ("X-X-mono")."""

    def __init__(self, groups: Mapping[str, DatasetGroup], batch_size: int, **kwargs: Any) -> None:
        super().__init__(groups, batch_size, alpha=1.0, **kwargs)


class CrossLingualBatchSampler(ParallelBatchSampler):
    """Every pair with query language != passage language ("X-Y")."""

    def __init__(self, groups: Mapping[str, DatasetGroup], batch_size: int, **kwargs: Any) -> None:
        super().__init__(groups, batch_size, alpha=0.0, **kwargs)


class HybridBatchSampler(ParallelBatchSampler):
    """A fraction `alpha` of the batches monolingual, the others cross-lingual (the paper: 0.5)."""

    def __init__(self, groups: Mapping[str, DatasetGroup], batch_size: int, alpha: float = 0.5, **kwargs: Any) -> None:
        super().__init__(groups, batch_size, alpha=alpha, **kwargs)
