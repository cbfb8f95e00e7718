"""The same config and seed give the same metrics.json and weights on CPU, bit for bit; the run dir
records what is needed to reproduce it: the resolved config, package versions and the git commit."""

import importlib.metadata
import json
import os
import re
import sys
from pathlib import Path

import yaml
from helpers import ForkedPython

REPO = Path(__file__).resolve().parents[1]


def test_same_config_and_seed_give_identical_runs(tmp_path, xquad_r_dir, cache_dir):
    # One thread per process: the two runs go side by side without slowing each other down.
    env = {**os.environ, "HYBATCH_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    args = [
        "model=tiny", f"data.data_dir={xquad_r_dir}", "data.languages=[en,de,ar]", "data.source.languages=[en,de,ar]",
        "data.source.max_articles=12", "data.batch_size=32", "trainer.max_steps=4",
        "callbacks.progress_bar=null", "baseline=false", "seed=3",
    ]
    runs = [tmp_path / "a", tmp_path / "b"]
    procs = [ForkedPython(["train.py", *args, f"hydra.run.dir={run}"], REPO, env, run.with_suffix(".log")) for run in runs]
    for proc in procs:
        assert proc.wait(timeout=600) == 0, proc.log.read_text()[-5000:]

    a, b = runs
    assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()
    assert (a / "model" / "model.safetensors").read_bytes() == (b / "model" / "model.safetensors").read_bytes()
    metrics = json.loads((a / "metrics.json").read_text())
    assert {"train/loss", "test/loss", "test/multi/mAP"} <= set(metrics)

    config = (a / "config.yaml").read_text()
    assert "${" not in config  # resolved
    resolved = yaml.safe_load(config)
    assert resolved["seed"] == 3 and resolved["data"]["data_dir"] == str(xquad_r_dir)
    assert resolved["paths"]["output_dir"] == str(a)

    info = json.loads((a / "run_info.json").read_text())
    for package in ("torch", "lightning", "transformers", "hydra-core", "numpy"):
        assert info["packages"][package] == importlib.metadata.version(package)
    assert info["packages"]["python"] == ".".join(map(str, sys.version_info[:3]))
    if (REPO / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", info["git"]["commit"]) and isinstance(info["git"]["dirty"], bool)
