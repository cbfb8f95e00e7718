"""What resuming needs beyond Lightning's defaults: atomic, tensors-only checkpoints and exact state.

Lightning restores the weights, optimiser, scheduler and loop counters, and (through
`RetrievalDataModule.state_dict`) the sampler's position. It does not restore the global random number
generators, which dropout draws from, nor the metrics logged before the checkpoint; `ExactResume`
adds both, so that a resumed run continues bit for bit where the interrupted one stopped.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

log = logging.getLogger(__name__)


class CheckpointLoadError(RuntimeError):
    """A checkpoint file cannot be read as a tensors-only training checkpoint."""


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
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        # O_EXCL: a fresh file; mode 0o666 minus the umask, like any file the user writes.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Callable | None = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if weights_only is False:
            raise CheckpointLoadError(f"{path}: checkpoints load with weights_only=True only")
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        return load_tensors_only(path, map_location)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
