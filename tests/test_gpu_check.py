"""benchmarks/gpu_check.py in its smoke mode (tiny sizes, CPU): it runs end to end and writes one JSON."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_smoke_mode_writes_the_json_in_under_30_seconds(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    start = time.perf_counter()
    gpu_check.main(["--smoke", "--device", "cpu", "--out", str(tmp_path / "check.json")])
    assert time.perf_counter() - start < 30
    report = json.loads((tmp_path / "check.json").read_text())
    for key in ("hybatch_b128", "sentence_transformers_b128", "hybatch_cached_b4096"):
        assert report[key]["pairs_per_s"] > 0, report[key]
    # Same weights, same batches: both sides train exactly the same parameters, so the ratio is reported.
    assert report["hybatch_b128"]["trained_parameters"] == report["sentence_transformers_b128"]["trained_parameters"]
    assert report["hybatch_b128"]["trained_parameters"] == report["model"]["parameters"]
    assert report["ratio_hybatch_over_sentence_transformers"] > 0
    assert report["search"]["torch_matmul_topk"]["seconds"] > 0 and report["search"]["faiss"]["status"]
    assert report["peak_bf16_flops"] is None and report["hybatch_b128"]["mfu"] is None  # no GPU, no MFU


def test_the_shell_wrapper_parses() -> None:
    subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_check.sh")], check=True)
