"""train.py end to end on a slice of XQuAD-R with the tiny model: the interface scripts rely on."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LANGS = "[en,de,ar]"


def run_train(args, env_cache, cwd=REPO, timeout=600):
    env = {**os.environ, "HYBATCH_CACHE": str(env_cache), "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def small_args(xquad_r_dir):
    return [
        "model=tiny",
        "data=xquad_r_split",
        f"data.data_dir={xquad_r_dir}",
        f"data.languages={LANGS}",
        f"data.source.languages={LANGS}",
        "data.source.max_articles=12",
        "callbacks.progress_bar=null",
    ]


def test_train_tiny_writes_model_metrics_and_config(tmp_path, xquad_r_dir, cache_dir):
    run_dir = tmp_path / "run"
    run_train(
        [*small_args(xquad_r_dir), "sampler=hybrid", "sampler.alpha=0.5", "data.batch_size=16", "seed=1",
         "trainer.max_steps=20", f"hydra.run.dir={run_dir}"],
        cache_dir,
    )
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/mono/mAP", "test/cross/mAP", "test/multi/mAP", "test/multi/lang_bias", "val/loss", "train/loss"):
        assert key in metrics, sorted(metrics)
    assert 0.0 <= metrics["test/multi/mAP"] <= 1.0
    assert "test/pair/en-de/mAP" in metrics
    # What the run trained on (one epoch, max_epochs=1, ends before max_steps): every batch counted
    # once, mono or cross, in the run's languages; the balanced schedule gives half of them mono.
    batches = int(metrics["composition/batches"])
    assert 0 < batches <= 20
    mono = sum(metrics[f"composition/mono/{lang}"] for lang in ("en", "de", "ar"))
    assert metrics["composition/mono_fraction"] == mono / batches and abs(mono - batches / 2) <= 0.5
    for side in ("query", "passage"):
        assert sum(metrics[f"composition/cross/{side}/{lang}"] for lang in ("en", "de", "ar")) == (batches - mono) * 16
    assert metrics["best/val/loss"] == min(metrics["best/val/loss"], metrics["val/loss"])

    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    model = SentenceTransformer(str(run_dir / "model"), device="cpu")
    assert model.prompts["query"] == "query: " and model.prompts["passage"] == "passage: "
    emb = model.encode(["Wie viele Punkte?"], prompt_name="query", normalize_embeddings=False)
    assert abs(float((emb**2).sum()) - 1.0) < 1e-4  # the Normalize module is part of the export
    AutoModel.from_pretrained(str(run_dir / "model"))

    # The exported folder reloads into our encoder with the same embeddings as sentence-transformers.
    from hybatch.encoder import DualEncoder

    ours = DualEncoder.from_pretrained(str(run_dir / "model")).encode(["Wie viele Punkte?"], "query", progress=False)
    assert float((ours[0] * __import__("torch").from_numpy(emb[0])).sum()) > 0.9999


def test_multirun_over_samplers(tmp_path, xquad_r_dir, cache_dir):
    sweep = tmp_path / "sweep"
    run_train(
        ["-m", *small_args(xquad_r_dir), "sampler=mono,cross,hybrid", "trainer.max_steps=2", "export_model=false",
         "data.batch_size=8", f"hydra.sweep.dir={sweep}"],
        cache_dir,
    )
    runs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(runs) == 3

    from hybatch.report.sweep import write_report

    markdown = write_report(sweep)
    for sampler in ("zero-shot", "mono", "cross", "hybrid"):
        assert f"| tiny | {sampler} |" in markdown
    assert (sweep / "report.csv").is_file() and (sweep / "report.png").stat().st_size > 0
