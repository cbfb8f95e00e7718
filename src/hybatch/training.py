"""What `train.py` runs: fit, test, export, write metrics.json."""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from hybatch.callbacks import AtomicCheckpointIO, ExactResume, StepCheckpoint, load_tensors_only
from hybatch.collate import PairCollator
from hybatch.module import check_same_backbone, load_deepspeed_encoder_weights, load_encoder_weights
from hybatch.reports import finish_loggers, lareqa_table, log_results, report_lareqa
from hybatch.run_info import write_run_info

log = logging.getLogger(__name__)


def instantiate_dict(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a config group that is a dict of named objects."""
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def step_checkpoints(cfg: DictConfig, output_dir: Path) -> list[StepCheckpoint]:
    """`last.ckpt` every `checkpoint_every_n_steps` steps, whatever `callbacks=` says."""
    every = cfg.get("checkpoint_every_n_steps")
    return [] if every is None else [StepCheckpoint(output_dir / "checkpoints", every)]


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """`last` means this run dir's last checkpoint (absent on a first run: start from scratch).

    So a job resubmitted with the same `hydra.run.dir` and `ckpt_path=last` (e.g. a SLURM
    requeue) starts the first time and resumes every later time. A checkpoint is a file, or a
    directory under DeepSpeed.
    """
    if ckpt_path != "last":
        if ckpt_path is not None and not Path(ckpt_path).exists():
            raise FileNotFoundError(f"ckpt_path={ckpt_path!r} does not exist")
        return ckpt_path
    last = output_dir / "checkpoints" / "last.ckpt"
    if last.exists():
        return str(last)
    log.warning(
        "ckpt_path=last but %s does not exist: starting from scratch (to resume a run, pass its hydra.run.dir)", last
    )
    return None


def write_metrics(path: Path, metrics: dict[str, float]) -> None:
    """Flat `split/setting/metric` keys, sorted; non-finite values become null (valid JSON).

    The learning-rate monitor's last reading (`lr-*`) is left out: not a result, and the step it
    comes from depends on the logging cadence, which Lightning shifts by one step after resuming
    from an epoch's end (the resumed run's metrics.json would differ from an uninterrupted one's).
    """
    clean = {k: (v if math.isfinite(v) else None) for k, v in sorted(metrics.items()) if not k.startswith("lr-")}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(clean, indent=2) + "\n")
    tmp.replace(path)


def release_freed_memory() -> None:
    """Hand the memory a finished run freed back to the operating system.

    glibc keeps freed heap memory for reuse, so without this an in-process multirun's resident size
    grows job after job (~200 MB a job with the bundled model; `benchmarks/multirun_memory.py`).
    """
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:  # not glibc (e.g. musl): nothing to trim
            return
        libc.malloc_trim(0)


def run_training(cfg: DictConfig) -> float | None:
    """Fit, test the best checkpoint, export the encoder; returns `cfg.optimized_metric`."""
    try:
        return _fit_test_export(cfg)
    finally:
        # Here the run's trainer, model and data are unreferenced: their memory can go back.
        release_freed_memory()


def _fit_test_export(cfg: DictConfig) -> float | None:
    output_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True)

    # Everything that can be wrong with the inputs is found before the run writes anything; the
    # data and the sampler first, in seconds, before a model is loaded.
    datamodule = instantiate(cfg.data, sampler=instantiate(cfg.sampler), seed=cfg.seed)
    datamodule.check()
    encoder = instantiate(cfg.model)
    datamodule.collator = PairCollator.from_encoder(encoder)
    module = instantiate(cfg.module, encoder=encoder)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    if ckpt_path is not None and Path(ckpt_path).is_file():
        # Memory-mapped: the tensors are not read, only the keys, shapes and hyperparameters.
        check_same_backbone(load_tensors_only(ckpt_path, mmap=True), encoder, ckpt_path)
    exact_resume = ExactResume()
    callbacks = [*instantiate_dict(cfg.get("callbacks")), exact_resume, *step_checkpoints(cfg, output_dir)]

    output_dir.mkdir(parents=True, exist_ok=True)
    write_run_info(cfg, output_dir)
    loggers = instantiate_dict(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    # Tensors-only loading: a checkpoint can hold no code that runs when it is read.
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)

    # A resumed run has not logged what came before its checkpoint itself.
    metrics = {**exact_resume.resumed_metrics}
    metrics.update((k, float(v)) for k, v in trainer.callback_metrics.items() if v.numel() == 1)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        # Test and export the selected checkpoint, not whatever the last step left.
        # DeepSpeed saves a directory of ZeRO shards instead of one file.
        (load_deepspeed_encoder_weights if Path(best).is_dir() else load_encoder_weights)(encoder, best)
        log.info("best checkpoint: %s", best)
    if cfg.get("test") and datamodule.data.test is not None:
        trainer.test(module, datamodule=datamodule)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
        metrics.update(module.test_metrics)
    if cfg.get("baseline") and datamodule.test_benchmark is not None and trainer.is_global_zero:
        metrics.update(baseline_metrics(cfg, datamodule.test_benchmark))
    if trainer.is_global_zero:
        if cfg.get("export_model"):
            encoder.save_pretrained(output_dir / "model")
            log.info("exported the encoder to %s", output_dir / "model")
        write_metrics(output_dir / "metrics.json", metrics)
        if datamodule.test_benchmark is not None:
            report_test_split(metrics, datamodule.test_benchmark.languages, output_dir, loggers)
    finish_loggers(loggers)

    name = cfg.get("optimized_metric")
    if name is None:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric={name!r} is not among the run's metrics: {sorted(metrics)[:20]}...")
    return metrics[name]


def baseline_metrics(cfg: DictConfig, benchmark: Any) -> dict[str, float]:
    """The configured backbone, untrained, on the same test benchmark: what training bought."""
    from hybatch.evaluation.lareqa import evaluate_lareqa

    log.info("evaluating the untrained backbone on the test split (baseline)")
    fresh = instantiate(cfg.model)
    metrics = evaluate_lareqa(benchmark, fresh, batch_size=cfg.module.eval_batch_size, progress=True)
    return {f"baseline/test/{k}": v for k, v in metrics.items()}


def report_test_split(metrics: dict[str, float], languages: list[str], output_dir: Path, loggers: list[Any]) -> None:
    """The paper's table for the fine-tuned model and the zero-shot backbone; matrices and plots
    under `test_report/` (and to W&B as a table and images)."""
    results = {
        label: {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
        for label, prefix in (("fine-tuned", "test/"), ("zero-shot", "baseline/test/"))
    }
    results = {label: m for label, m in results.items() if "multi/mAP" in m}
    if not results:
        return
    Console().print(lareqa_table(results, title="Test split (held-out articles)"))
    tables, images = report_lareqa(results, dict.fromkeys(results, languages), output_dir / "test_report")
    log_results([lg for lg in loggers if isinstance(lg, WandbLogger)], {}, tables, images)
