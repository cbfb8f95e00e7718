"""The LightningDataModule: a training data source, a batch sampler and the collator."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from hybatch.atomic import atomic_write_text
from hybatch.collate import PairCollator
from hybatch.data.corpus import CorpusError, DatasetGroup, ParallelCorpus
from hybatch.data.training_data import TrainingData
from hybatch.held_out_batches import (
    HeldOutBatchConfig,
    HeldOutPlan,
    PlannedBatchSampler,
    plan_held_out_batches,
)
from hybatch.samplers import BatchItem, ParallelBatchSampler

log = logging.getLogger(__name__)

SamplerFactory = Callable[..., ParallelBatchSampler]


class PairDataset(Dataset):
    """Looks up the texts of a `BatchItem`: the query in its language, the passage and its hard
    negatives in the passage language, and their identity keys in that language (`PassageKeys`:
    same key, same passage)."""

    def __init__(self, corpus: ParallelCorpus, num_hard_negatives: int = 0) -> None:
        self.corpus = corpus
        self.num_hard_negatives = num_hard_negatives
        self.passage_keys = corpus.passage_keys()

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, item: BatchItem) -> dict[str, Any]:
        example = self.corpus[item.example]
        query = example.translations[item.query_lang]
        passage = example.translations[item.passage_lang]
        negatives = list(passage.negatives[: self.num_hard_negatives])
        return {
            "id": example.id,
            "query": query.query,
            "positive": passage.positive,
            "negatives": negatives,
            "query_lang": item.query_lang,
            "passage_lang": item.passage_lang,
            "passage_key": self.passage_keys.positive(item.example, item.passage_lang),
            "negative_keys": self.passage_keys.negatives(item.passage_lang, negatives),
        }


def missing_hard_negatives(corpus: ParallelCorpus, languages: Sequence[str], num: int) -> dict[str, tuple[int, int]]:
    """Per language: (examples with fewer than `num` hard negatives in it, the negatives they lack)."""
    out = {}
    for lang in languages:
        short = [num - len(ex.translations[lang].negatives) for ex in corpus.examples
                 if lang in ex.translations and len(ex.translations[lang].negatives) < num]  # fmt: skip
        out[lang] = (len(short), sum(short))
    return out


def log_missing_hard_negatives(corpus: ParallelCorpus, languages: Sequence[str], num: int, split: str) -> None:
    """A row brings the hard negatives its passage language has, up to `num`; nothing is padded, so say
    how many are missing (a row short of them has fewer candidates, not made-up ones)."""
    missing = {lang: counts for lang, counts in missing_hard_negatives(corpus, languages, num).items() if counts[0]}
    if missing:
        log.warning(
            "%s: data.num_hard_negatives=%d, but some examples have fewer in their passage language (examples short, "
            "negatives missing, per language: %s); their rows bring only those they have",
            split, num, {lang: list(counts) for lang, counts in missing.items()},
        )  # fmt: skip


class ResumableDataLoader(DataLoader):
    """A training DataLoader that places every new iterator itself: resumed position, else epoch start.

    Its state is the sampler's epoch and the number of batches the training loop has processed
    (`progress()`), not what the sampler has handed out: workers and Lightning's fetcher read ahead.
    Lightning's own handling is not enough in 2.6: it calls `set_epoch` only on a loader's
    `sampler` and `batch_sampler.sampler`, never on a batch sampler, and it restores loader states
    only if the loader is built after the checkpoint is read, which `estimated_stepping_batches`
    in `configure_optimizers` prevents. So the first iterator after `load_state_dict` continues
    the saved position (an epoch whose batches were all processed continues with the next
    epoch), and every other iterator starts epoch `epoch()` (Lightning's `current_epoch`).
    """

    def __init__(self, *args: Any, progress: Callable[[], int], epoch: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._progress = progress
        self._epoch = epoch
        self._resume: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        sampler: ParallelBatchSampler = self.batch_sampler
        if self._resume is not None:
            epoch, start = int(self._resume["epoch"]), int(self._resume["next_batch"])
            if start >= len(sampler):
                epoch, start = epoch + 1, 0
            self._resume = None
        else:
            epoch, start = self._epoch(), 0
        sampler.load_state_dict({**sampler.state_dict(), "epoch": epoch, "next_batch": start})
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        return {**self.batch_sampler.state_dict(), "next_batch": self._progress()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Checked now (same seed, batch size, world size), applied by the next `__iter__`.
        self.batch_sampler.load_state_dict(state)
        self._resume = dict(state)


class RetrievalDataModule(pl.LightningDataModule):
    """Training pairs in the composition a batch sampler decides, plus the held-out benchmarks.

    `source(data_dir=...)` loads the data (train / val / test corpora and, for LAReQA splits, the
    retrieval benchmarks of the held-out articles); `data_dir` is where its files are (None: the
    source downloads them into the cache). `sampler` is a partially configured batch sampler; the
    data module completes it with the data, the batch size and this process's rank. `hygiene`
    (e.g. `BenchmarkHygiene`) refuses or drops training examples found in evaluation data.
    `val_batches` (`HeldOutBatchConfig` or its mapping) plans the validation and test loss batches
    from the held-out data alone, the same for every sampler (`hybatch.held_out_batches`).
    Loaders draw their seeds from generators of their own, never from the global RNG, so that
    creating an iterator does not change the dropout masks of training (exact resumption).
    """

    def __init__(
        self,
        source: Callable[..., TrainingData],
        sampler: SamplerFactory,
        languages: Sequence[str],
        data_dir: str | None = None,
        batch_size: int = 16,
        collator: PairCollator | None = None,
        num_workers: int = 0,
        num_hard_negatives: int = 0,
        seed: int = 0,
        hygiene: Callable[[TrainingData], TrainingData] | None = None,
        val_batches: Mapping[str, Any] | HeldOutBatchConfig | None = None,
    ) -> None:
        super().__init__()
        if num_hard_negatives < 0:
            raise ValueError(f"data.num_hard_negatives={num_hard_negatives}: expected >= 0")
        self.source = source
        self.data_dir = data_dir
        self.sampler_factory = sampler
        self.languages = list(languages)
        self.batch_size = batch_size
        self.collator = collator
        self.num_workers = num_workers
        self.num_hard_negatives = num_hard_negatives
        self.seed = seed
        self.hygiene = hygiene
        self.val_batches = HeldOutBatchConfig.from_config(val_batches)
        self._plans: dict[tuple[str, int], HeldOutPlan] = {}
        self._fitted_batch_sizes: set[tuple[str, int, int]] = set()
        self.data: TrainingData | None = None
        self._train_loader: ResumableDataLoader | None = None
        self._resume_state: dict[str, Any] | None = None

    # --- distributed context -----------------------------------------------------------------
    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _processed_batches(self) -> int:
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed if self.trainer else 0

    def _train_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer else 0

    # --- resumption ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The training loader's position, saved in every checkpoint (see `ResumableDataLoader`)."""
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restored before any loader is built; the next training loader starts from it."""
        self._resume_state = state_dict.get("train_loader")

    # --- data ---------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        data = self.source(data_dir=self.data_dir)
        for name in ("train", "val", "test"):
            corpus = getattr(data, name)
            if (corpus is None and name == "train") or (corpus is not None and len(corpus) == 0):
                raise CorpusError(f"the {name} split is empty; check data.source")
        if self.hygiene is not None:
            data = self.hygiene(data)
            if len(data.train) == 0:
                raise CorpusError("no training example is left once those found in evaluation data are dropped")
        self.data = data
        log.info(
            "training data: %d train / %s val / %s test examples; languages %s",
            len(self.data.train),
            len(self.data.val) if self.data.val else 0,
            len(self.data.test) if self.data.test else 0,
            self.languages,
        )
        if self.num_hard_negatives:
            for name in ("train", "val", "test"):
                if getattr(data, name) is not None:
                    log_missing_hard_negatives(getattr(data, name), self.languages, self.num_hard_negatives, name)

    def check(self, monitor: str | None = None) -> None:
        """Load the data, build the training sampler and plan the held-out loss batches once: a data
        or sampler error stops a run before it writes anything (the distributed run checks again with
        its world size). `monitor` (the checkpoint metric) must be one the validation can log."""
        self.make_sampler("train")
        for split in ("val", "test"):
            self.held_out_plan(split)
        if monitor and monitor.startswith("val/") and monitor not in ("val/loss", "val/accuracy") and self.val_benchmark is None:
            raise CorpusError(
                f"the checkpoint monitor {monitor!r} is a retrieval metric, but the validation data has no LAReQA "
                "benchmark (data=xquad_r_split has one); monitor val/loss"
            )

    def held_out_plan(self, split: str, world_size: int = 1) -> HeldOutPlan | None:
        """The planned loss batches of the val or test split (None without that split)."""
        self.setup()
        corpus = getattr(self.data, split)
        if corpus is None:
            return None
        if (split, world_size) not in self._plans:
            self._plans[split, world_size] = plan_held_out_batches(
                corpus, self.languages, self.val_batches, self.batch_size, world_size, split
            )
        return self._plans[split, world_size]

    def write_run_plans(self, output_dir: str | Path, world_size: int = 1) -> None:
        """`val_batches.json` (the validation loss batches) and, when the source split by article,
        `split.json` (train / val / test article titles) into the run dir."""
        output_dir = Path(output_dir)
        plan = self.held_out_plan("val", world_size)
        if plan is not None:
            plan.write(output_dir / "val_batches.json", self.data.val)
        if self.data.split is not None:
            # Every rank writes the same file; atomic_write_text's temporary names are unique.
            atomic_write_text(output_dir / "split.json", json.dumps(self.data.split, indent=1, ensure_ascii=False) + "\n")

    def make_sampler(self, split: str, world_size: int = 1, rank: int = 0, batch_size: int | None = None) -> ParallelBatchSampler:
        """The configured sampler over one split (also used by `hybatch.describe_batches`)."""
        self.setup()
        corpus: ParallelCorpus = getattr(self.data, split)
        groups = corpus.groups(self.languages, split)
        batch_size = batch_size or self.batch_size
        for name, group in groups.items():
            # When every language is short the data is smaller than a batch: the sampler says so.
            counts = {lang: group.language_counts.get(lang, 0) for lang in group.languages}
            short = {lang: n for lang, n in counts.items() if n < batch_size * world_size}
            if short and len(short) < len(counts):
                raise CorpusError(
                    f"{split} dataset {name!r}: language(s) {short} have fewer examples than one batch "
                    f"(data.batch_size={batch_size} x {world_size} device(s)); lower data.batch_size or leave "
                    f"them out of data.languages"
                )
        batch_size = self._fit_batch_size(groups, batch_size, world_size, split)
        return self.sampler_factory(groups=groups, batch_size=batch_size, seed=self.seed, world_size=world_size, rank=rank)

    def _fit_batch_size(self, groups: Mapping[str, DatasetGroup], batch_size: int, world_size: int, split: str) -> int:
        """`batch_size`, or the largest per-device batch the data allow when every dataset is smaller than
        one global batch: a batch comes from one dataset and holds distinct ids, so the smallest dataset
        bounds it. Below 2 pairs (no in-batch negative), or when only some datasets are short, the
        sampler's error stands."""
        sizes = {name: len(g.examples) for name, g in groups.items()}
        fitted = min(sizes.values()) // world_size
        if max(sizes.values()) >= batch_size * world_size or fitted < 2:
            return batch_size
        if (split, batch_size, world_size) not in self._fitted_batch_sizes:
            self._fitted_batch_sizes.add((split, batch_size, world_size))
            log.warning(
                "data.batch_size=%d x %d device(s) is more than every %s dataset holds (%s examples): using batch "
                "size %d, the largest the smallest dataset fills; set data.batch_size to choose it yourself",
                batch_size, world_size, split, sizes, fitted,
            )  # fmt: skip
        return fitted

    def _loader(self, corpus: ParallelCorpus, batch_sampler: Sampler, **kwargs: Any) -> DataLoader:
        if self.collator is None:
            raise RuntimeError("RetrievalDataModule needs a collator (PairCollator.from_encoder(encoder)) to build loaders")
        cls = ResumableDataLoader if kwargs else DataLoader
        return cls(
            PairDataset(corpus, self.num_hard_negatives),
            batch_sampler=batch_sampler,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        world_size, rank = self._world()
        sampler = self.make_sampler("train", world_size, rank)
        loader = self._loader(self.data.train, sampler, progress=self._processed_batches, epoch=self._train_epoch)
        if self._resume_state is not None:
            loader.load_state_dict(self._resume_state)
            self._resume_state = None
        self._train_loader = loader
        return loader

    def _held_out_loader(self, split: str) -> DataLoader | list:
        world_size, rank = self._world()
        plan = self.held_out_plan(split, world_size)
        if plan is None:
            return []
        return self._loader(getattr(self.data, split), PlannedBatchSampler(plan, rank))

    def val_dataloader(self) -> DataLoader | list:
        return self._held_out_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._held_out_loader("test")

    @property
    def val_benchmark(self):
        return self.data.val_benchmark if self.data else None

    @property
    def test_benchmark(self):
        return self.data.test_benchmark if self.data else None
