"""What `train.py` runs: fit, test, export, write metrics.json."""

from __future__ import annotations

import ctypes
import gc
import logging
import sys
from pathlib import Path
from typing import Any, NamedTuple

import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from hybatch.callbacks import BatchComposition, ExactResume, LareqaEvaluation, StepCheckpoint
from hybatch.collate import PairCollator
from hybatch.config import instantiate_dict
from hybatch.datamodule import RetrievalDataModule
from hybatch.encoder import DualEncoder
from hybatch.encoder.checkpoints import (
    AtomicCheckpointIO,
    check_same_backbone,
    load_deepspeed_encoder_weights,
    load_encoder_weights,
    load_tensors_only,
)
from hybatch.interpolation import WeightInterpolation, interpolate_after_fit, interpolation_config
from hybatch.lightning_module import DualEncoderModule
from hybatch.loggers import finish_loggers, log_results
from hybatch.model_card import write_model_card
from hybatch.publish import PublishError, check_can_publish, publish_run
from hybatch.report.benchmark_tables import lareqa_table, report_lareqa
from hybatch.run_outputs import (
    BASELINE_PER_QUERY,
    PER_QUERY,
    optimized_metric,
    refuse_test_selection,
    write_metrics,
    write_run_info,
)

log = logging.getLogger(__name__)


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
        return optimized_metric(_fit_test_export(cfg), cfg.get("optimized_metric"))
    finally:
        # Here the run's trainer, model and data are unreferenced: their memory can go back.
        release_freed_memory()


class CheckedRun(NamedTuple):
    datamodule: RetrievalDataModule
    encoder: DualEncoder
    module: DualEncoderModule
    ckpt_path: str | None
    interpolation: WeightInterpolation | None


def build_checked(cfg: DictConfig, output_dir: Path) -> CheckedRun:
    """The datamodule, encoder, module, checkpoint to resume from and interpolation settings, with
    everything that can be wrong with the inputs found before the run writes anything: the data, the
    sampler and the interpolation settings first, in seconds, before a model is loaded; a checkpoint of
    another backbone before any training."""
    refuse_test_selection(cfg.get("optimized_metric"))
    if OmegaConf.select(cfg, "hub.push", default=False):
        if not cfg.get("export_model"):
            raise ValueError("hub.push=true uploads the exported model: it needs export_model=true")
        check_can_publish(cfg.hub.repo_id)
    datamodule = instantiate(cfg.data, sampler=instantiate(cfg.sampler), seed=cfg.seed)
    datamodule.check(monitor=OmegaConf.select(cfg, "callbacks.model_checkpoint.monitor"))
    interpolation = interpolation_config(cfg, datamodule)
    encoder = instantiate(cfg.model)
    datamodule.collator = PairCollator.from_encoder(encoder)
    # The model config goes into the checkpoints: `evaluate.py ckpt_path=...` rebuilds the encoder from it.
    # Passed after instantiation: as an `instantiate` keyword, the config's `_target_` would be built.
    model_config = OmegaConf.to_container(cfg.model, resolve=True)
    module = instantiate(cfg.module, encoder=encoder, _partial_=True)(model_config=model_config)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    if ckpt_path is not None and Path(ckpt_path).is_file():
        # Memory-mapped: the tensors are not read, only the keys, shapes and hyperparameters.
        check_same_backbone(load_tensors_only(ckpt_path, mmap=True), encoder, ckpt_path)
    return CheckedRun(datamodule, encoder, module, ckpt_path, interpolation)


def _fit_test_export(cfg: DictConfig) -> dict[str, float]:
    """The run; returns what goes into metrics.json."""
    output_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule, encoder, module, ckpt_path, interpolation = build_checked(cfg, output_dir)
    exact_resume = ExactResume()
    lareqa = LareqaEvaluation(
        datamodule.val_benchmark, datamodule.test_benchmark, cfg.module.eval_batch_size, output_dir / PER_QUERY
    )
    composition = BatchComposition(datamodule.languages)
    callbacks = [
        *instantiate_dict(cfg.get("callbacks")), exact_resume, lareqa, composition, *step_checkpoints(cfg, output_dir)
    ]

    output_dir.mkdir(parents=True, exist_ok=True)
    write_run_info(cfg, output_dir)
    loggers = instantiate_dict(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])
    # What the validation loss is computed on (the same for every sampler) and the article split.
    datamodule.write_run_plans(output_dir, trainer.world_size)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    # Tensors-only loading: a checkpoint can hold no code that runs when it is read.
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    # A resumed run has not logged what came before its checkpoint itself.
    metrics = {**exact_resume.resumed_metrics, **scalar_metrics(trainer), **composition.metrics(), **best_score(trainer)}
    load_best_checkpoint(trainer, encoder)
    metrics.update(interpolate_after_fit(interpolation, cfg, encoder, datamodule, trainer, output_dir, loggers))
    if cfg.get("test") and datamodule.data.test is not None:
        trainer.test(module, datamodule=datamodule)
        metrics.update(scalar_metrics(trainer))
        metrics.update(lareqa.test_metrics)
    if cfg.get("baseline") and datamodule.test_benchmark is not None and trainer.is_global_zero:
        metrics.update(baseline_metrics(cfg, datamodule.test_benchmark, output_dir / BASELINE_PER_QUERY))
    if trainer.is_global_zero:
        write_outputs(cfg, encoder, metrics, datamodule.test_benchmark, output_dir, loggers)
        if OmegaConf.select(cfg, "hub.push", default=False):
            try:
                publish_run(output_dir, cfg.hub.repo_id, private=bool(cfg.hub.private))
            except PublishError as err:  # the run itself succeeded: its outputs stay, the upload can be redone
                log.error("%s; retry with `python -m hybatch.publish %s repo_id=%s`", err, output_dir, cfg.hub.repo_id)
    finish_loggers(loggers)
    return metrics


def scalar_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """What the run logged last, as floats (`callback_metrics` also holds non-scalar tensors)."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def best_score(trainer: pl.Trainer) -> dict[str, float]:
    """`best/<monitor>`: the monitored validation value of the checkpoint that is tested and exported."""
    checkpoint = trainer.checkpoint_callback
    if checkpoint is None or checkpoint.monitor is None or checkpoint.best_model_score is None:
        return {}
    return {f"best/{checkpoint.monitor}": float(checkpoint.best_model_score)}


def load_best_checkpoint(trainer: pl.Trainer, encoder: DualEncoder) -> None:
    """Test and export the selected checkpoint, not whatever the last step left.

    DeepSpeed saves a directory of ZeRO shards instead of one file.
    """
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        (load_deepspeed_encoder_weights if Path(best).is_dir() else load_encoder_weights)(encoder, best)
        log.info("best checkpoint: %s", best)


def write_outputs(
    cfg: DictConfig, encoder: DualEncoder, metrics: dict[str, float], test_benchmark: Any, output_dir: Path, loggers: list[Any]
) -> None:
    """The exported model, metrics.json and the test split's report (global rank 0 only)."""
    if cfg.get("export_model"):
        encoder.save_pretrained(output_dir / "model")
        log.info("exported the encoder to %s", output_dir / "model")
    write_metrics(output_dir / "metrics.json", metrics)
    if cfg.get("export_model"):
        write_model_card(output_dir)  # reads metrics.json: after it
    if test_benchmark is not None:
        report_test_split(metrics, test_benchmark.languages, output_dir, loggers)


def baseline_metrics(cfg: DictConfig, benchmark: Any, per_query_path: Path | None = None) -> dict[str, float]:
    """The configured backbone, untrained, on the same test benchmark: what training bought (with
    `per_query_path`, its per-query rows too, so the report can put intervals on it)."""
    from hybatch.evaluation.lareqa_scoring import evaluate_lareqa

    log.info("evaluating the untrained backbone on the test split (baseline)")
    fresh = instantiate(cfg.model)
    metrics = evaluate_lareqa(
        benchmark, fresh, batch_size=cfg.module.eval_batch_size, progress=True, per_query_path=per_query_path
    )
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
