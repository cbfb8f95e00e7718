"""Shared fixtures. Tests marked `gpu` need CUDA; `network` ones run only with HYBATCH_NETWORK_TESTS=1.

Tests on ../shared/data skip when it is missing, except under HYBATCH_REQUIRE_SHARED_DATA=1 (set by
.ci/run), where a missing data set fails them: CI must not pass having run fewer tests than it seems.
"""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
XQUAD_R_DIR = Path(os.environ.get("HYBATCH_XQUAD_R_DIR", REPO.parent / "shared" / "data" / "xquad-r"))
REQUIRE_SHARED_DATA = os.environ.get("HYBATCH_REQUIRE_SHARED_DATA") == "1"


def missing_shared_data(message: str) -> None:
    """Skip the test, or fail it under HYBATCH_REQUIRE_SHARED_DATA=1; every missing-data skip goes through here."""
    if REQUIRE_SHARED_DATA:
        pytest.fail(f"{message}; HYBATCH_REQUIRE_SHARED_DATA=1 makes missing shared data a failure", pytrace=False)
    pytest.skip(message)


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
        missing_shared_data(f"XQuAD-R not found at {XQUAD_R_DIR} (set HYBATCH_XQUAD_R_DIR)")
    return XQUAD_R_DIR


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the session: the bundled tokenizer / model are converted once."""
    path = Path(os.environ.get("HYBATCH_TEST_CACHE", tmp_path_factory.mktemp("hybatch-cache")))
    os.environ["HYBATCH_CACHE"] = str(path)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared machine they spin against other jobs
    (`pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
