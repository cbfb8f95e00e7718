"""The Hydra entry point of `prepare_data.py` and the `hybatch-prepare-data` console script.

prepare.yaml sets `hydra.job.name: prepare_data`, so run dirs and logs say so whichever way the
run starts. Heavy imports happen inside the function: `--help` and `--cfg job` answer at once.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from hybatch.config import CONFIG_DIR


@hydra.main(config_path=CONFIG_DIR, config_name="prepare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """`prepare_data.py source=nq translate=nllb_600m languages=[de,es] out_dir=data/prepared`."""
    from hybatch.prepare.pipeline import run_prepare

    run_prepare(cfg)
