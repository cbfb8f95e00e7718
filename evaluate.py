"""Evaluate an encoder: `python evaluate.py benchmark=xquad_r model=me5_small [ckpt_path=...]` (see README.md)."""

import hydra
from omegaconf import DictConfig

from hybatch.config import CONFIG_DIR
from hybatch.evaluation.runner import run_evaluation


@hydra.main(config_path=CONFIG_DIR, config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, float] | float:
    metrics = run_evaluation(cfg)
    name = cfg.get("optimized_metric")
    if name is None:
        return metrics
    if name not in metrics:
        raise KeyError(f"optimized_metric={name!r} is not among the metrics: {sorted(metrics)[:20]}...")
    return metrics[name]


if __name__ == "__main__":
    main()
