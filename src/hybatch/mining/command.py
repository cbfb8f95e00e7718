"""`mine_negatives.py` / `hybatch-mine-negatives` (conf/mine.yaml): hard negatives mined per language.

    python mine_negatives.py input=train.jsonl out=train.mined.jsonl num_negatives=3 "rank_range=[3,50]" max_score_ratio=0.95

Writes `out` (the input's lines with `negatives` filled per language) and `<out name>.mine.json` (model,
settings, counts per language and filter, time, passages/s). Resumable: see `hybatch.mining.miner`.
Heavy imports happen inside the functions: `--help` and `--cfg job` answer at once.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf

from hybatch.config import CONFIG_DIR

if TYPE_CHECKING:
    from hybatch.mining.inputs import MiningJob
    from hybatch.mining.miner import SearchSettings
    from hybatch.mining.select import MiningFilters

log = logging.getLogger(__name__)

REPORT_VERSION = 1


@hydra.main(config_path=CONFIG_DIR, config_name="mine", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Mine `input` into `out`."""
    run_mining(cfg)


def _settings(cfg: DictConfig) -> tuple[MiningFilters, SearchSettings, list[str] | None]:
    """Filters, search settings and languages, checked before any data or model loads."""
    from hybatch.mining.miner import SearchSettings
    from hybatch.mining.select import MiningFilters

    rank_range = list(cfg.rank_range)
    if len(rank_range) != 2:
        raise ValueError(f"rank_range={rank_range}: expected two ranks [a, b]")
    ratio = cfg.max_score_ratio
    filters = MiningFilters(int(cfg.num_negatives), (int(rank_range[0]), int(rank_range[1])),
                            None if ratio is None else float(ratio))  # fmt: skip
    options = OmegaConf.to_container(cfg.index_options, resolve=True) if cfg.get("index_options") else {}
    settings = SearchSettings(index=str(cfg.index), index_options=options, batch_size=int(cfg.batch_size),
                              shard_size=int(cfg.shard_size), dtype=str(cfg.dtype), search_batch=int(cfg.search_batch),
                              pool=str(cfg.pool))  # fmt: skip
    languages = None if cfg.get("languages") is None else [str(lang) for lang in cfg.languages]
    return filters, settings, languages


def run_mining(cfg: DictConfig, encoder: Any = None) -> list[Path]:
    """Mine every job of `cfg.input`; returns the files written (outputs, then reports). `encoder`: one
    already loaded (a benchmark timing mining alone), else `cfg`'s (`load_encoder`)."""
    import torch
    from hydra.utils import instantiate

    from hybatch.backbones.loading import load_encoder
    from hybatch.encoder.checkpoints import model_identity
    from hybatch.mining.inputs import jobs_for, write_outputs
    from hybatch.mining.miner import mine_corpus

    filters, settings, languages = _settings(cfg)

    def xquad_r():
        return instantiate(cfg.data.source)(data_dir=cfg.data.data_dir)

    jobs = jobs_for(str(cfg.input), cfg.out, cfg.get("work_dir"), xquad_r)
    for job in jobs:  # every job's languages are checked before the model loads
        present = job.corpus.languages()
        missing = [lang for lang in languages or [] if lang not in present]
        if missing:
            raise ValueError(f"languages={languages}: {job.source} has no {missing}; it has {sorted(present)}")
    encoder = encoder if encoder is not None else load_encoder(cfg)
    if isinstance(encoder, torch.nn.Module):
        encoder.eval()
    model = {"identity": model_identity(OmegaConf.to_container(cfg.model, resolve=True)),
             "name_or_path": cfg.model.get("name_or_path"), "ckpt_path": cfg.get("ckpt_path")}  # fmt: skip
    written: list[Path] = []
    for job in jobs:
        started = time.monotonic()
        resumed = job.work_dir.is_dir() and any(job.work_dir.iterdir())
        langs = languages or sorted(job.corpus.languages())
        log.info("mining %s: %d examples, languages %s%s", job.name, len(job.corpus), langs, " (resuming)" if resumed else "")
        mined = mine_corpus(job.corpus, langs, encoder, job.work_dir, filters, settings, progress=bool(cfg.progress))
        negatives = {lang: {ex: [m.texts[r] for r in rows] for ex, rows in zip(m.examples, m.negatives, strict=True)}
                     for lang, m in mined.items()}  # fmt: skip
        write_outputs(job, negatives)
        seconds = time.monotonic() - started
        report = _report(cfg, job, model, mined, seconds, resumed)
        _write_report(job.report, report)
        written += [path for path, _ in job.outputs] + [job.report]
        log.info("wrote %s and %s: %d negatives for %d questions in %.1f s (%.1f passages/s)",
                 ", ".join(str(p) for p, _ in job.outputs), job.report, report["totals"]["kept"],
                 report["totals"]["queries"], seconds, report["passages_per_s"])  # fmt: skip
    return written


def _report(cfg: DictConfig, job: MiningJob, model: dict[str, Any], mined: dict[str, Any], seconds: float, resumed: bool) -> dict[str, Any]:
    from hybatch.run_outputs import git_commit, package_versions

    counts = {lang: {"passages": len(m.texts), **m.counts, "seconds": round(m.seconds, 3)} for lang, m in mined.items()}
    totals = {key: sum(c[key] for c in counts.values()) for key in next(iter(counts.values())) if key != "seconds"}
    return {
        "report_version": REPORT_VERSION,
        "dataset": job.name,
        "input": job.source,
        "outputs": [p.name for p, _ in job.outputs],
        "model": model,
        "settings": {
            "num_negatives": int(cfg.num_negatives), "rank_range": list(cfg.rank_range),
            "max_score_ratio": cfg.max_score_ratio, "pool": cfg.pool, "languages": list(mined),
            "index": cfg.index, "index_options": OmegaConf.to_container(cfg.index_options, resolve=True) if cfg.get("index_options") else {},
            "batch_size": int(cfg.batch_size), "shard_size": int(cfg.shard_size), "dtype": cfg.dtype,
        },  # fmt: skip
        "counts": counts,
        "totals": totals,
        "seconds": round(seconds, 3),
        # Pool passages over the wall time of this run (encoding, search, writing); a resumed run
        # (`resumed`) reused what an earlier one had finished, so its rate is not a speed.
        "passages_per_s": round(totals["passages"] / seconds, 2) if seconds > 0 else None,
        "resumed": resumed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "packages": package_versions(),
        "git": git_commit(Path(__file__).resolve().parent),
        "platform": platform.platform(),
    }


def _write_report(path: Path, report: dict[str, Any]) -> None:
    from hybatch.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
