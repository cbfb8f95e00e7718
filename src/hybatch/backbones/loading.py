"""The encoder `evaluate.py` scores: the configured model, or the one a training checkpoint holds.

`model.name_or_path=<folder or hub id>` works with any model config (the default one included): the
folder's own settings win. `ckpt_path=<.ckpt>` alone rebuilds the encoder from the model config the
checkpoint stores; `model.<key>=...` overrides apply on top of it, and `model=<group>` chooses the
model explicitly (a checkpoint of another backbone is then refused by name).
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hybatch.encoder import DualEncoder
from hybatch.encoder.checkpoints import encoder_from_checkpoint

log = logging.getLogger(__name__)


def load_encoder(cfg: DictConfig) -> DualEncoder:
    """`cfg.model`, or with `cfg.ckpt_path` the checkpoint's encoder with its trained weights."""
    ckpt_path = cfg.get("ckpt_path")
    if not ckpt_path:
        return instantiate(cfg.model)
    path = Path(ckpt_path)
    if path.is_dir():
        raise ValueError(
            f"ckpt_path={ckpt_path!r} is a directory (a DeepSpeed checkpoint): evaluate the model its run "
            "exported instead, model.name_or_path=<run dir>/model"
        )
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path!r} does not exist")
    keys = model_overrides(cfg)
    if "model" in keys:
        encoder = encoder_from_checkpoint(path, OmegaConf.to_container(cfg.model, resolve=True))
    else:
        top = {key.split(".")[1] for key in keys}
        overrides = {k: OmegaConf.to_container(cfg.model, resolve=True)[k] for k in top}
        encoder = encoder_from_checkpoint(path, cache_dir=cfg.paths.cache_dir, overrides=overrides)
    log.info("loaded encoder weights from %s", path)
    encoder.weights_path = str(path)
    return encoder


def model_overrides(cfg: DictConfig) -> list[str]:
    """The keys of this run's `model=...` and `model.<key>=...` overrides (command line or sweep).

    From the config's own `hydra` node when it was composed with one, else from the running Hydra
    job; none when there is neither (a config composed in code without its Hydra node).
    """
    if "hydra" in cfg:
        task = cfg.hydra.overrides.task
    elif HydraConfig.initialized():
        task = HydraConfig.get().overrides.task
    else:
        return []
    keys = [override.split("=", 1)[0].lstrip("+~") for override in task]
    return [key for key in keys if key == "model" or key.startswith("model.")]
