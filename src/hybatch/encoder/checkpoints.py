"""Training checkpoints: tensors-only loading, atomic saving, the backbone check and encoder weights.

A checkpoint is read with `torch.load(weights_only=True)` only (no pickled code runs), written to a
temporary file and renamed (a kill never corrupts it), refused by name when it belongs to another
backbone, and carries the model config its encoder was built from (`MODEL_CONFIG_KEY` in the
module's hyperparameters), so that `encoder_from_checkpoint` rebuilds the encoder from it alone.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from hybatch.atomic import atomic_open
from hybatch.encoder.dual_encoder import DualEncoder

log = logging.getLogger(__name__)

# The LightningModule hyperparameters that identify the encoder (see `DualEncoderModule`).
BACKBONE_KEY = "backbone"
MODEL_CONFIG_KEY = "model_config"


class CheckpointLoadError(RuntimeError):
    """A checkpoint file cannot be read as a tensors-only training checkpoint."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not belong to the configured encoder."""


def load_tensors_only(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """`torch.load(weights_only=True)`: tensors and plain Python values only, no pickled code runs.

    A truncated file or one that needs arbitrary unpickling is answered with the path and the reason.
    `mmap=True` maps the tensors instead of reading them: cheap when only the metadata is needed.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointLoadError(
            f"{path} holds objects other than tensors and plain Python values; it is refused because loading "
            f"it would run pickled code ({str(err).splitlines()[0]})"
        ) from err
    except (RuntimeError, EOFError) as err:
        raise CheckpointLoadError(f"{path} is not a readable checkpoint (truncated or corrupt?): {err}") from err


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file next to it, then renames it over the target.

    A kill during a save leaves the previous checkpoint intact (and at worst a `.<name>.*.tmp` file,
    removed by the next save of the same checkpoint). Loading is always tensors-only.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            # Remote filesystems: Lightning's fsspec transaction.
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options (got {storage_options!r})")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        with atomic_open(path, "wb", durable=True) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Callable | None = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if weights_only is False:
            raise CheckpointLoadError(f"{path}: checkpoints load with weights_only=True only")
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        return load_tensors_only(path, map_location)


def check_same_backbone(checkpoint: dict[str, Any], encoder: DualEncoder, path: str | os.PathLike) -> None:
    """Refuse, by name, a checkpoint whose backbone or encoder tensors differ from the configured encoder's."""
    _check_is_training_checkpoint(checkpoint, path)
    trained = checkpoint.get("hyper_parameters", {}).get(BACKBONE_KEY)
    if trained is not None and trained != encoder.name_or_path:
        raise CheckpointMismatchError(
            f"{path} was trained with backbone {trained!r}, but the configured model is "
            f"{encoder.name_or_path!r}; choose the matching model= config"
        )
    _check_same_tensors(checkpoint, encoder, path)


def _check_is_training_checkpoint(checkpoint: Any, path: str | os.PathLike) -> None:
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointMismatchError(f"{path} is not a training checkpoint of this project: it has no 'state_dict'")


def _check_same_tensors(checkpoint: dict[str, Any], encoder: DualEncoder, path: str | os.PathLike) -> None:
    ours = {k: v.shape for k, v in encoder.state_dict().items()}
    theirs = {k.removeprefix("encoder."): v.shape for k, v in checkpoint["state_dict"].items() if k.startswith("encoder.")}
    if ours != theirs:
        missing = sorted(set(ours) - set(theirs))[:3]
        unexpected = sorted(set(theirs) - set(ours))[:3]
        shapes = [k for k in set(ours) & set(theirs) if ours[k] != theirs[k]][:3]
        raise CheckpointMismatchError(
            f"{path} does not fit the configured encoder {encoder.name_or_path!r}: missing {missing}, "
            f"unexpected {unexpected}, different shapes {shapes}"
        )


def _copy_encoder_weights(encoder: DualEncoder, checkpoint: dict[str, Any]) -> DualEncoder:
    encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in checkpoint["state_dict"].items() if k.startswith("encoder.")})
    return encoder


def load_encoder_weights(encoder: DualEncoder, ckpt_path: str | os.PathLike) -> DualEncoder:
    """Load a training checkpoint's encoder weights (tensors only: no code runs while loading)."""
    checkpoint = load_tensors_only(ckpt_path)
    check_same_backbone(checkpoint, encoder, ckpt_path)
    return _copy_encoder_weights(encoder, checkpoint)


def load_deepspeed_encoder_weights(encoder: DualEncoder, ckpt_dir: str | os.PathLike) -> DualEncoder:
    """Load the encoder weights of a DeepSpeed checkpoint, a directory of ZeRO shards, merged to fp32.

    The merge is DeepSpeed's own (zero_to_fp32), which unpickles the shard files in full: for checkpoints
    a run of this project wrote itself, not for files from elsewhere.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    merged = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir))
    # Lightning's DeepSpeed engine holds the LightningModule under `_forward_module`.
    checkpoint = {"state_dict": {k.removeprefix("_forward_module."): v for k, v in merged.items()}}
    check_same_backbone(checkpoint, encoder, ckpt_dir)
    return _copy_encoder_weights(encoder, checkpoint)


# Builders that moved (hybatch.models -> hybatch.backbones): checkpoints of earlier releases store the
# old `_target_`; read for one release.
MOVED_TARGETS = {"hybatch.models.builders.": "hybatch.backbones.builders."}


def current_target(target: str) -> str:
    """`target` under the module path of this release (see `MOVED_TARGETS`)."""
    for old, new in MOVED_TARGETS.items():
        if target.startswith(old):
            return new + target[len(old) :]
    return target


def model_identity(model_config: Mapping[str, Any]) -> str:
    """What a model config loads: its `name_or_path`, or for a model built in code its builder."""
    return str(model_config.get("name_or_path") or current_target(str(model_config.get("_target_"))))


def encoder_from_checkpoint(
    ckpt_path: str | os.PathLike,
    model_config: Mapping[str, Any] | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> DualEncoder:
    """The encoder a training checkpoint holds: rebuilt, then its weights loaded (tensors only).

    Without `model_config`, the model config stored in the checkpoint is rebuilt, with `overrides`
    (e.g. a longer `query_max_length`) on top and `cache_dir` replacing the training run's. With one
    (the user chose a model), it must load what the checkpoint was trained from: else it is refused
    by name before anything is built.
    """
    checkpoint = load_tensors_only(ckpt_path)
    _check_is_training_checkpoint(checkpoint, ckpt_path)
    stored = checkpoint.get("hyper_parameters", {}).get(MODEL_CONFIG_KEY)
    if model_config is None:
        if stored is None:
            raise CheckpointMismatchError(
                f"{ckpt_path} does not record the model config it was trained with (written before hybatch "
                "stored it): choose the run's model config, e.g. model=<the run's model group>"
            )
        model_config = {**stored, **(overrides or {})}
        if cache_dir is not None and "cache_dir" in model_config:
            model_config["cache_dir"] = str(cache_dir)
        log.info("%s: rebuilding its encoder %s", ckpt_path, model_identity(model_config))
    elif stored is not None and model_identity(stored) != model_identity(model_config):
        raise CheckpointMismatchError(
            f"{ckpt_path} was trained with model {model_identity(stored)!r}, but the chosen model is "
            f"{model_identity(model_config)!r}: leave model= out to evaluate the checkpoint's own, or choose "
            "the matching model= config"
        )
    model_config = {**model_config, "_target_": current_target(str(model_config["_target_"]))}
    encoder = instantiate(dict(model_config), _convert_="all")
    if stored is None:
        check_same_backbone(checkpoint, encoder, ckpt_path)
    else:  # the same model config: its name may differ by cache folder only
        _check_same_tensors(checkpoint, encoder, ckpt_path)
    return _copy_encoder_weights(encoder, checkpoint)
