"""Send evaluation results to Lightning loggers: scalars to all, tables and images to W&B."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, WandbLogger


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
