"""A run reports what it trained on (`composition/...`) and never selects on the test split."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hybatch import config
from hybatch.callbacks import BatchComposition
from hybatch.run_outputs import refuse_test_selection

REPO = Path(__file__).resolve().parents[1]


def batch(pairs):
    return {"query_lang": [q for q, _ in pairs], "passage_lang": [p for _, p in pairs]}


def test_batch_composition_counts_batches_and_rows_and_survives_a_checkpoint():
    counter = BatchComposition(["en", "de", "ar"])
    for pairs in ([("en", "en")] * 4, [("de", "ar"), ("ar", "en"), ("de", "en"), ("en", "de")], [("ar", "ar")] * 4):
        counter.on_train_batch_end(None, None, None, batch(pairs), 0)
    resumed = BatchComposition(["en", "de", "ar"])
    resumed.load_state_dict(counter.state_dict())
    resumed.on_train_batch_end(None, None, None, batch([("en", "en")] * 4), 0)
    trainer = SimpleNamespace(strategy=SimpleNamespace(reduce=lambda t, reduce_op: t))
    resumed.on_train_end(trainer, SimpleNamespace(device=torch.device("cpu")))
    got = resumed.metrics()
    assert got["composition/batches"] == 4 and got["composition/mono_fraction"] == 0.75
    assert (got["composition/mono/en"], got["composition/mono/de"], got["composition/mono/ar"]) == (2, 0, 1)
    assert [got[f"composition/cross/query/{lang}"] for lang in ("en", "de", "ar")] == [1, 2, 1]
    assert [got[f"composition/cross/passage/{lang}"] for lang in ("en", "de", "ar")] == [2, 1, 1]


@pytest.mark.parametrize("name", ["test/multi/mAP", "baseline/test/mono/mAP", "xquad_r/test/cross/mAP"])
def test_a_sweep_on_a_test_metric_is_refused_by_name(monkeypatch, name):
    refuse_test_selection(name)  # a single run: nothing selects on it
    monkeypatch.setattr(config, "sweep_group", lambda: "sweep")
    with pytest.raises(ValueError, match=f"optimized_metric='{name}' is a test-split metric"):
        refuse_test_selection(name)
    refuse_test_selection("best/val/multi/mAP")


def test_train_multirun_with_a_test_metric_stops_before_training(tmp_path, cache_dir):
    env = {**os.environ, "HYBATCH_CACHE": str(cache_dir), "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "train.py", "-m", "model=tiny", "optimized_metric=test/multi/mAP", f"hydra.sweep.dir={tmp_path}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "optimized_metric='test/multi/mAP' is a test-split metric" in proc.stderr
    assert not list(tmp_path.rglob("metrics.json")) and not list(tmp_path.rglob("split.json"))


def test_the_default_optimized_metric_is_the_best_validation_score():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=config.CONFIG_DIR, version_base="1.3"):
        assert compose("train").optimized_metric == "best/val/loss"
        assert compose("train", ["experiment=optuna"]).optimized_metric == "best/val/multi/mAP"


def test_hub_push_offline_stops_the_run_before_it_starts(tmp_path, cache_dir):
    env = {**os.environ, "HYBATCH_CACHE": str(cache_dir), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "train.py", "model=tiny", "hub.push=true", "hub.repo_id=someone/model", f"hydra.run.dir={run_dir}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0 and "offline mode (HF_HUB_OFFLINE=1): nothing was uploaded" in proc.stderr
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "metrics.json").exists()
