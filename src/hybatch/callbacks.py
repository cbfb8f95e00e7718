"""The project's Lightning callbacks: exact resumption, step checkpoints, LAReQA evaluation, the
realized batch composition.

Lightning restores the weights, optimiser, scheduler and loop counters, and (through
`RetrievalDataModule.state_dict`) the sampler's position. It does not restore the global random number
generators, which dropout draws from, nor the metrics logged before the checkpoint; `ExactResume`
adds both, so that a resumed run continues bit for bit where the interrupted one stopped.
`LareqaEvaluation` scores the held-out LAReQA benchmarks at every validation and test.
"""

from __future__ import annotations

import logging
import os
import random
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from hybatch.evaluation.lareqa_scoring import evaluate_lareqa

if TYPE_CHECKING:
    from hybatch.data.lareqa_benchmarks import LareqaBenchmark

log = logging.getLogger(__name__)


class StepCheckpoint(ModelCheckpoint):
    """`last.ckpt` every `every_n_steps` optimiser steps, besides the per-validation checkpoints.

    A long epoch then costs at most `every_n_steps` steps when the run dies. The version counter
    is off because the per-validation `ModelCheckpoint` writes `last.ckpt` too.
    """

    def __init__(self, dirpath: str | os.PathLike, every_n_steps: int) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"checkpoint_every_n_steps={every_n_steps!r}: expected a number of steps >= 1, or null")
        super().__init__(
            dirpath=dirpath,
            monitor=None,
            save_top_k=0,
            save_last=True,
            every_n_train_steps=every_n_steps,
            enable_version_counter=False,
        )


def _rng_states() -> dict[str, Any]:
    """Global RNG states as tensors and plain values (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(py_state), py_gauss],
    }


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = states["python"]
    random.setstate((version, tuple(py_state), py_gauss))


class ExactResume(Callback):
    """Saves the global RNG states and the logged metrics in every checkpoint; restores them on resume.

    The RNG states are set in `on_train_start`, after Lightning has restored everything else and
    built the data iterators (the data loaders draw from generators of their own, so the global
    states at that point are those of the interrupted run at its checkpoint). The metrics logged
    before the checkpoint are kept in `resumed_metrics`, not put back into the trainer (callbacks
    such as EarlyStopping would count them again): `run_training` writes them to `metrics.json`
    under whatever the resumed run logs itself, so it matches an uninterrupted run's. Under DDP
    every rank resumes with rank 0's RNG state: equivalent, not bit-identical, to an uninterrupted run.
    """

    KEY = "hybatch_exact_resume"

    def __init__(self) -> None:
        self._rng: dict[str, Any] | None = None
        self.resumed_metrics: dict[str, float] = {}

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        metrics = {**self.resumed_metrics}
        metrics.update(
            (k, float(v)) for k, v in trainer.callback_metrics.items() if isinstance(v, torch.Tensor) and v.numel() == 1
        )
        checkpoint[self.KEY] = {"rng": _rng_states(), "metrics": metrics}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(self.KEY)
        if state is None:
            log.warning("the checkpoint has no RNG states: the resumed run will not repeat the interrupted one exactly")
            return
        self._rng = state["rng"]
        self.resumed_metrics = dict(state["metrics"])

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._rng is not None:
            _set_rng_states(self._rng)
            self._rng = None
            log.info("resumed with the checkpoint's RNG states")


# Logged every validation / test; the per-pair and per-language keys go to metrics.json only.
_LOGGED_PREFIXES = ("mono/", "cross/", "multi/")


def _loggable(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith(_LOGGED_PREFIXES) and k.count("/") == 1}


class LareqaEvaluation(Callback):
    """Scores the module's `encoder` on the validation / test LAReQA benchmarks at the end of every
    validation and test epoch; logs `val/<setting>/<metric>` and `test/<setting>/<metric>`.

    The summary metrics (`mono/mAP`, `multi/lang_bias`, ...) go to the loggers, averaged over ranks
    (every rank evaluated the same weights: the mean is the value, and keeps the ranks in step). The
    test split's full set (with `pair/<q>-<c>/...` and per-language keys) is kept in `test_metrics`;
    the keys not logged reach `trainer.callback_metrics` too, without the loggers: the way they come
    back to the launching process when the test ran in worker processes (`trainer.strategy=ddp_spawn`),
    where this object's `test_metrics` stays empty. With `test_per_query_path`, global rank 0 also
    writes every test query's values there (`hybatch.evaluation.lareqa_scoring.write_per_query`).
    """

    def __init__(
        self,
        val: LareqaBenchmark | None,
        test: LareqaBenchmark | None,
        batch_size: int = 64,
        test_per_query_path: str | os.PathLike | None = None,
    ) -> None:
        self.benchmarks = {"val": val, "test": test}
        self.batch_size = batch_size
        self.test_per_query_path = test_per_query_path
        self.test_metrics: dict[str, float] = {}

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> dict[str, float]:
        bench = self.benchmarks[split]
        if bench is None:
            return {}
        per_query = self.test_per_query_path if split == "test" and trainer.is_global_zero else None
        metrics = evaluate_lareqa(
            bench, pl_module.encoder, batch_size=self.batch_size, progress=False, per_query_path=per_query
        )
        return {f"{split}/{k}": v for k, v in metrics.items()}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = self._evaluate(trainer, pl_module, "val")
        pl_module.log_dict({f"val/{k}": v for k, v in _loggable({k[4:]: v for k, v in metrics.items()}).items()}, sync_dist=True)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.test_metrics = self._evaluate(trainer, pl_module, "test")
        logged = {f"test/{k}": v for k, v in _loggable({k[5:]: v for k, v in self.test_metrics.items()}).items()}
        pl_module.log_dict(logged, sync_dist=True)
        pl_module.log_dict({k: v for k, v in self.test_metrics.items() if k not in logged}, logger=False, sync_dist=True)


class BatchComposition(Callback):
    """Counts what the run actually trained on: monolingual batches per language, cross-lingual rows
    per query and per passage language (global counts: a monolingual batch is one on every rank,
    cross-lingual rows are summed over ranks). Kept in checkpoints, so a resumed run counts from the
    start; `metrics()` gives the `composition/...` keys of metrics.json."""

    def __init__(self, languages: list[str]) -> None:
        self.languages = list(languages)
        self.batches = 0
        self.mono = dict.fromkeys(self.languages, 0)
        self.cross_query = dict.fromkeys(self.languages, 0)
        self.cross_passage = dict.fromkeys(self.languages, 0)
        self._reduced: dict[str, float] | None = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        queries, passages = batch["query_lang"], batch["passage_lang"]
        self.batches += 1
        if all(q == p for q, p in zip(queries, passages)) and len(set(queries)) == 1:
            self.mono[queries[0]] += 1
            return
        for q, p in zip(queries, passages):
            self.cross_query[q] += 1
            self.cross_passage[p] += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        counts = [self.cross_query[lang] for lang in self.languages] + [self.cross_passage[lang] for lang in self.languages]
        rows = torch.tensor(counts, dtype=torch.int64, device=pl_module.device)
        rows = trainer.strategy.reduce(rows, reduce_op="sum").cpu().tolist()
        n = len(self.languages)
        self._reduced = {
            "composition/batches": float(self.batches),
            "composition/mono_fraction": sum(self.mono.values()) / max(self.batches, 1),
            **{f"composition/mono/{lang}": float(self.mono[lang]) for lang in self.languages},
            **{f"composition/cross/query/{lang}": rows[i] for i, lang in enumerate(self.languages)},
            **{f"composition/cross/passage/{lang}": rows[n + i] for i, lang in enumerate(self.languages)},
        }

    def metrics(self) -> dict[str, float]:
        """The realized composition, once training has ended."""
        return dict(self._reduced or {})

    def state_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "mono": dict(self.mono),
            "cross_query": dict(self.cross_query),
            "cross_passage": dict(self.cross_passage),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches = int(state_dict["batches"])
        for name in ("mono", "cross_query", "cross_passage"):
            getattr(self, name).update(state_dict[name])
