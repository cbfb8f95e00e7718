"""Console entry points (`hybatch-train`, `hybatch-evaluate`); train.py / evaluate.py call the same functions.

The configs ship inside the package (CONFIG_DIR), so both work from any directory after `pip install .`.
Hydra names a job after the file its task function is defined in (here: `cli`); train.yaml and
evaluate.yaml set `hydra.job.name` so that run dirs and log files say `train` / `evaluate` whichever
way a run is started. The heavy imports (torch, Lightning) happen inside the functions, so `--help`
and `--cfg job` answer at once.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from hybatch.config import CONFIG_DIR


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def train(cfg: DictConfig) -> float | None:
    """Fit, test and export (`hybatch-train sampler=hybrid model=labse`); returns `cfg.optimized_metric`."""
    from hybatch.training import run_training

    return run_training(cfg)


@hydra.main(config_path=CONFIG_DIR, config_name="evaluate", version_base="1.3")
def evaluate(cfg: DictConfig) -> float | None:
    """Evaluate an encoder on the configured benchmarks; returns `cfg.optimized_metric` (None when unset)."""
    from hybatch.evaluation.runner import run_evaluation
    from hybatch.run_outputs import optimized_metric

    return optimized_metric(run_evaluation(cfg), cfg.get("optimized_metric"))
