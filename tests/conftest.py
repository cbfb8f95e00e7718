"""Shared fixtures. Tests marked `gpu` need CUDA; `network` ones run only with HYBATCH_NETWORK_TESTS=1."""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
XQUAD_R_DIR = Path(os.environ.get("HYBATCH_XQUAD_R_DIR", REPO.parent / "shared" / "data" / "xquad-r"))


def pytest_collection_modifyitems(config, items):
    online = os.environ.get("HYBATCH_NETWORK_TESTS") == "1"
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "network" in item.keywords and not online:
            item.add_marker(pytest.mark.skip(reason="needs the Hugging Face hub: set HYBATCH_NETWORK_TESTS=1"))


@pytest.fixture(scope="session")
def xquad_r_dir() -> Path:
    if not (XQUAD_R_DIR / "en.json").is_file():
        pytest.skip(f"XQuAD-R not found at {XQUAD_R_DIR} (set HYBATCH_XQUAD_R_DIR)")
    return XQUAD_R_DIR


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the session: the bundled tokenizer / model are converted once."""
    path = Path(os.environ.get("HYBATCH_TEST_CACHE", tmp_path_factory.mktemp("hybatch-cache")))
    os.environ["HYBATCH_CACHE"] = str(path)
    return path
