"""Shared fixtures. Tests marked `gpu` need CUDA; `network` ones run only with HYBATCH_NETWORK_TESTS=1.

Tests on ../shared/data skip when it is missing, except under HYBATCH_REQUIRE_SHARED_DATA=1 (set by
.ci/run), where a missing data set fails them: CI must not pass having run fewer tests than it seems.
"""

import os
from pathlib import Path

import pytest
import torch
from helpers import REPO, missing_shared_data, write_lareqa

# Under pytest-xdist each worker gets its share of the cores (README's command: 2 workers on 2 cores,
# one thread each), and so do the processes tests start: threads beyond the cores spin against each other.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _THREADS = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

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


@pytest.fixture
def mlqa_like_dir(tmp_path: Path) -> Path:
    """MLQA-R shape: questions in only some languages, 1-3 answers per question, several per paragraph."""
    d = tmp_path / "mlqa"
    d.mkdir()
    write_lareqa(d / "en.json", "Art", [
        (["Paris is the capital of France.", "It has many museums.", "The Seine flows through it."],
         [("q1", "What is the capital of France?", 0), ("q2", "Which river flows through Paris?", 2), ("q3", "What does Paris have many of?", 1)]),
        (["Berlin is in Germany.", "It is large."], [("q4", "Where is Berlin?", 0)]),
    ])
    write_lareqa(d / "de.json", "Art", [
        (["Paris ist die Hauptstadt Frankreichs.", "Die Seine fliesst hindurch.", "Es hat viele Museen."],
         [("q1", "Was ist die Hauptstadt Frankreichs?", 0), ("q3", "Wovon hat Paris viele?", 2)]),
    ])
    write_lareqa(d / "ar.json", "Art", [
        (["باريس عاصمة فرنسا.", "نهر السين يمر عبرها."], [("q2", "ما النهر الذي يمر عبر باريس؟", 1)]),
    ])
    return d
