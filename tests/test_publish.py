"""`python -m hybatch.publish`: arguments checked, offline or unreachable hub refused at once with nothing
changed; the real upload is a `network` test (HYBATCH_NETWORK_TESTS=1, HF_TOKEN, HYBATCH_HUB_TEST_REPO)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_run

from hybatch.publish import PublishError, commit_message, parse_args, publish_run

REPO = Path(__file__).resolve().parents[1]


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}


def test_arguments():
    run, options = parse_args(["runs/x", "repo_id=me/model", "private=true"])
    assert run == Path("runs/x") and options == {"repo_id": "me/model", "private": True, "branch": "main", "tag": None}
    for argv, message in (([], "usage"), (["repo_id=me/m"], "usage"), (["r", "repo_id=model"], "expected <user or organisation>/"),
                          (["r", "repo_id=me/m", "privat=true"], "key among"), (["r", "repo_id=me/m", "private=yes"], "true or false")):  # fmt: skip
        with pytest.raises(PublishError, match=message):
            parse_args(argv)


def test_offline_fails_at_once_and_changes_nothing(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "model" / "modules.json").write_text("[]")
    before = snapshot(run)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_not_a_token"}
    proc = subprocess.run([sys.executable, "-m", "hybatch.publish", str(run), "repo_id=someone/model"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1 and "offline mode (HF_HUB_OFFLINE=1): nothing was uploaded" in proc.stderr, proc.stderr[-2000:]
    assert snapshot(run) == before


def test_unreachable_hub_and_missing_model_are_named(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run")
    with pytest.raises(PublishError, match="holds no exported model"):
        publish_run(run, "someone/model")
    (run / "model" / "modules.json").write_text("[]")
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_token")
    before = snapshot(run)
    with pytest.raises(PublishError, match=r"cannot reach the Hugging Face hub at http://127.0.0.1:9 .*nothing was uploaded"):
        publish_run(run, "someone/model")
    assert snapshot(run) == before
    assert commit_message(run).startswith("hybatch run run: HybridBatchSampler alpha=0.3; languages en,de; test multi mAP 0.6111")


@pytest.mark.network
def test_real_upload(tmp_path, cache_dir):
    from huggingface_hub import HfApi

    from hybatch.backbones.builders import tiny_dual_encoder

    repo_id = os.environ.get("HYBATCH_HUB_TEST_REPO")
    if not repo_id or not os.environ.get("HF_TOKEN"):
        pytest.skip("set HF_TOKEN and HYBATCH_HUB_TEST_REPO=<user>/<scratch model repo> for the real upload")
    run = make_run(tmp_path / "run")
    tiny_dual_encoder(cache_dir=cache_dir).save_pretrained(run / "model")
    publish_run(run, repo_id, private=True, tag="hybatch-test-upload")
    files = HfApi().list_repo_files(repo_id, revision="hybatch-test-upload")
    assert {"README.md", "config.json", "modules.json", "model.safetensors"} <= set(files)
