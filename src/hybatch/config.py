"""Hydra/OmegaConf glue shared by the entry points."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

# The configs ship inside the package (`pip install .` works outside a checkout); the top-level
# conf/ of a checkout is a link to this folder.
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")


def wandb_offline() -> bool:
    """Offline unless the user configured W&B, so a run never stops at a login prompt."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun", "disabled")
    if os.environ.get("WANDB_API_KEY"):
        return False
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is None
    except (FileNotFoundError, netrc.NetrcParseError):
        return True


def sweep_group() -> str | None:
    """The sweep directory's name in a multirun (W&B groups the sweep's runs by it), else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return Path(hydra_cfg.sweep.dir).name


def sweeper_optimises() -> bool:
    """Whether this job belongs to a multirun whose sweeper reads the returned metric (Optuna & co.);
    the basic sweeper's grid ignores it."""
    from hydra.core.hydra_config import HydraConfig

    if sweep_group() is None:
        return False
    target = str(HydraConfig.get().sweeper.get("_target_", ""))
    return not target.endswith("BasicSweeper")


def instantiate_dict(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a config group that is a dict of named objects."""
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def register_resolvers() -> None:
    """`${hybatch_wandb_offline:}` and `${hybatch_sweep_group:}` in configs."""
    for name, fn in (("hybatch_wandb_offline", wandb_offline), ("hybatch_sweep_group", sweep_group)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
# faiss logs every CPU-feature probe at INFO: noise in every run's log.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
