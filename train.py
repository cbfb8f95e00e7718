"""Train a multilingual dual encoder: `python train.py sampler=hybrid model=labse` (see README.md)."""

import hydra
from omegaconf import DictConfig

from hybatch.config import CONFIG_DIR
from hybatch.training import run_training


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run_training(cfg)


if __name__ == "__main__":
    main()
