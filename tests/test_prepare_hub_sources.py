"""Every hub source config loads from the hub: the first rows, through `prepare_data.py`'s own path
(`run_prepare` with `limit`, which streams instead of downloading the whole dataset), normalise to
non-empty ids, queries and positives. Network tests: run with HYBATCH_NETWORK_TESTS=1."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from hybatch.config import CONFIG_DIR
from hybatch.data.parallel_jsonl import read_parallel_jsonl
from hybatch.prepare.pipeline import run_prepare

SOURCE_DIR = Path(CONFIG_DIR) / "dataset"
LIMIT = 5


def hub_sources() -> list:
    params = []
    for path in sorted(SOURCE_DIR.glob("*.yaml")):
        cfg = OmegaConf.load(path)
        if not str(cfg.get("_target_", "")).endswith("HubSource"):
            continue  # local files: tests/test_prepare_text.py
        missing = [k for k in cfg if OmegaConf.is_missing(cfg, k)]
        marks = [pytest.mark.skip(reason=f"dataset={path.stem} needs {missing} (user's files)")] if missing else []
        params.append(pytest.param(path.stem, marks=marks, id=path.stem))
    return params


@pytest.mark.network
@pytest.mark.parametrize("source", hub_sources())
def test_hub_source_first_rows_normalise_to_non_empty_fields(tmp_path, source):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("prepare", overrides=[
            f"dataset={source}", "translate=none", "languages=[]", "hygiene=null", f"limit={LIMIT}",
            f"out_dir={tmp_path}", "progress=false",
        ])  # fmt: skip
    examples = read_parallel_jsonl([run_prepare(cfg)]).examples
    assert len(examples) == LIMIT
    for ex in examples:
        assert ex.id and ex.dataset == cfg.dataset.name
        t = ex.translations[cfg.dataset.language]
        assert t.query.strip() and t.positive.strip() and all(n.strip() for n in t.negatives)
