"""Send evaluation results to Lightning loggers: scalars to all, tables and images to W&B; a CSV logger
that several processes can write one after another."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _ColumnKeepingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        """Lightning deletes an existing metrics.csv here: the rows of the phases that ran before."""

    def save(self) -> None:
        # The file may have been written by another process with columns this writer has not seen;
        # Lightning's writer would rewrite it with its own columns only and fail on the old rows.
        if self.metrics and self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                header = next(csv.reader(file), [])
            self.metrics_keys = sorted(set(self.metrics_keys) | set(header))
        super().save()


class ProcessSafeCSVLogger(CSVLogger):
    """Lightning's `CSVLogger`, except that it keeps the columns and rows other processes wrote to its
    metrics.csv: under `trainer.strategy=ddp_spawn` fit and then test each run in fresh worker processes,
    all writing the same file."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ColumnKeepingWriter(log_dir=self.log_dir)
        return self._experiment


def log_results(
    loggers: Sequence[Logger],
    metrics: Mapping[str, float],
    tables: Mapping[str, tuple[list[str], list[list[Any]]]] | None = None,
    images: Mapping[str, Path] | None = None,
) -> None:
    """Finite scalars through `log_metrics`; `tables` (key -> columns, rows) and `images` (key -> PNG)
    through `WandbLogger.log_table` / `log_image`, which other loggers have no equivalent for."""
    scalars = {k: float(v) for k, v in metrics.items() if math.isfinite(v)}
    for logger in loggers:
        logger.log_metrics(scalars, step=0)
        if isinstance(logger, WandbLogger):
            for key, (columns, rows) in (tables or {}).items():
                logger.log_table(key=key, columns=list(columns), data=[list(r) for r in rows])
            for key, path in (images or {}).items():
                logger.log_image(key=key, images=[str(path)])
        logger.save()


def finish_loggers(loggers: Sequence[Logger]) -> None:
    """Finalize every logger and close the W&B run, so the next run of a multirun starts its own."""
    for logger in loggers:
        logger.finalize("success")
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        wandb.finish()
