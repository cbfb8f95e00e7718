"""What `evaluate.py` runs: the encoder (`hybatch.backbones.loading`: `cfg.model` or `cfg.ckpt_path`), every configured benchmark,
`metrics.json`, report files, printed tables, loggers.

`cfg.benchmark` has one shape for one or many benchmarks: `benchmarks: {prefix: {_target_: ..., ...}}`
plus command-line shortcuts (`languages`, `data_dir`, `candidate_text`) that, when not null, are
copied into every benchmark entry that has that key.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Protocol

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from hybatch.backbones.loading import load_encoder
from hybatch.config import instantiate_dict
from hybatch.evaluation.lareqa_scoring import LareqaTask
from hybatch.evaluation.miracl_task import MiraclTask
from hybatch.loggers import finish_loggers, log_results
from hybatch.report.benchmark_tables import lareqa_table, miracl_table, report_lareqa
from hybatch.retrieval.index import TextEncoder
from hybatch.run_outputs import write_metrics, write_run_info

log = logging.getLogger(__name__)

SHORTCUTS = ("languages", "data_dir", "candidate_text")


class BenchmarkTask(Protocol):
    """A configured benchmark (`LareqaTask`, `MiraclTask`)."""

    name: str
    languages: list[str]

    def prepare(self) -> None:
        """Locate / download and parse the data (no model needed)."""

    def evaluate(self, encoder: TextEncoder, *, batch_size: int, work_dir: Path, progress: bool = True) -> dict[str, float]:
        """Flat metrics without the benchmark prefix."""


def build_benchmarks(cfg: DictConfig) -> dict[str, BenchmarkTask]:
    """Instantiate `cfg.benchmarks` after applying the shortcuts; the dict keys become metric prefixes."""
    entries = cfg.get("benchmarks")
    if not entries:
        raise ValueError("benchmark.benchmarks is empty: choose benchmark=xquad_r, mlqa_r, miracl, beir or all")
    entries = OmegaConf.to_container(entries, resolve=True)
    if not isinstance(entries, dict):
        raise ValueError(f"benchmark.benchmarks: expected a mapping name -> benchmark config, got {entries!r}")
    for name, entry in entries.items():
        if not isinstance(entry, dict) or "_target_" not in entry:
            raise ValueError(f"benchmark.benchmarks.{name}: expected a mapping with a _target_, got {entry!r}")
    for key in SHORTCUTS:
        value = cfg.get(key)
        if value is None:
            continue
        targets = [name for name, entry in entries.items() if key in entry]
        if not targets:
            raise ValueError(f"benchmark.{key}={value}: none of the benchmarks {list(entries)} has a {key!r} setting")
        if key == "data_dir" and len(entries) > 1:
            raise ValueError(
                f"benchmark.data_dir applies to a single benchmark; with {list(entries)} set "
                "benchmark.benchmarks.<name>.data_dir for each"
            )
        for name in targets:
            entries[name][key] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    # _convert_: plain lists and dicts reach the tasks, not ListConfig / DictConfig.
    return {name: instantiate(entry, _convert_="all") for name, entry in entries.items()}


def run_evaluation(cfg: DictConfig) -> dict[str, float]:
    """Evaluate `cfg.model` on every benchmark; returns the flat `<benchmark>/<setting>/<metric>` metrics."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_run_info(cfg, output_dir)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    tasks = build_benchmarks(cfg.benchmark)
    for task in tasks.values():
        task.prepare()  # config and data errors surface before the model loads and anything is encoded

    encoder = load_encoder(cfg)
    if isinstance(encoder, torch.nn.Module):
        encoder.eval()

    metrics: dict[str, float] = {}
    results: dict[str, dict[str, float]] = {}
    for name, task in tasks.items():
        start = time.perf_counter()
        results[name] = task.evaluate(encoder, batch_size=cfg.eval_batch_size, work_dir=output_dir / name, progress=True)
        log.info("%s evaluated in %.1f s", name, time.perf_counter() - start)
        metrics.update({f"{name}/{k}": v for k, v in results[name].items()})
        write_metrics(output_dir / "metrics.json", metrics)  # after each benchmark: a later failure keeps these
    report_results(cfg, tasks, results, metrics, output_dir)
    return metrics


def report_results(
    cfg: DictConfig,
    tasks: dict[str, BenchmarkTask],
    results: dict[str, dict[str, float]],
    metrics: dict[str, float],
    output_dir: Path,
) -> None:
    """Pair matrices and plots under `output_dir`, the paper-layout tables on the console, and the
    flat `metrics`, tables and images to the configured loggers."""
    console = Console()
    lareqa = {name: results[name] for name, task in tasks.items() if isinstance(task, LareqaTask)}
    tables, images = report_lareqa(lareqa, {name: tasks[name].languages for name in lareqa}, output_dir)
    log.info("wrote the language-pair matrices and plots under %s", output_dir)
    if lareqa:
        console.print(lareqa_table(lareqa))
    for name, task in tasks.items():
        if isinstance(task, MiraclTask):
            console.print(miracl_table(results[name], task.languages, title=name))

    loggers = instantiate_dict(cfg.get("logger"))
    if loggers:
        for logger in loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        log_results(loggers, metrics, tables, images)
        finish_loggers(loggers)
