"""mteb tasks on local NTREX-128 / Tatoeba files: mteb's own evaluator agrees with a nearest-neighbour
search computed here from the backbone's raw outputs; prompts per task type; config wiring."""

import hashlib
import json
import logging

import numpy as np
import pytest
import torch
from helpers import REPO, missing_shared_data
from hydra import compose, initialize_config_dir
from mteb import get_task
from mteb.types import PromptType
from sklearn.metrics import accuracy_score, f1_score

from hybatch.config import CONFIG_DIR
from hybatch.data.ntrex import read_ntrex
from hybatch.data.tatoeba import read_tatoeba
from hybatch.evaluation import mteb_tasks
from hybatch.evaluation.mteb_tasks import DualEncoderForMteb, load_ntrex_into
from hybatch.evaluation.runner import build_benchmarks, run_evaluation

NTREX_DIR = REPO.parent / "shared" / "data" / "ntrex-128"


@pytest.fixture(scope="module")
def ntrex_dir():
    if not (NTREX_DIR / "newstest2019-src.eng.txt").is_file():
        missing_shared_data(f"NTREX-128 not found at {NTREX_DIR}")
    return NTREX_DIR


@pytest.fixture(scope="module")
def tatoeba_dir(ntrex_dir, tmp_path_factory):
    """LASER's Tatoeba v1 layout: NTREX's shortest sentences (Tatoeba's are short) for deu and swh; no fra."""
    root = tmp_path_factory.mktemp("tatoeba")
    sentences = read_ntrex(ntrex_dir, ["deu", "swa"])[0]
    shortest = sorted(range(len(sentences["eng"])), key=lambda i: len(sentences["eng"][i]))[:40]
    for laser, ntrex, lines in (("deu", "deu", shortest[::2]), ("swh", "swa", shortest[1::2])):
        (root / f"tatoeba.{laser}-eng.{laser}").write_text("".join(sentences[ntrex][i] + "\n" for i in lines), encoding="utf-8")
        (root / f"tatoeba.{laser}-eng.eng").write_text("".join(sentences["eng"][i] + "\n" for i in lines), encoding="utf-8")
    return root


@pytest.fixture
def evaluated_encoders(monkeypatch):
    """The encoders the run hands to mteb (one model load per test instead of two)."""
    seen = []

    def recording(encoder, **kwargs):
        seen.append(encoder)
        return DualEncoderForMteb(encoder, **kwargs)

    monkeypatch.setattr(mteb_tasks, "DualEncoderForMteb", recording)
    return seen


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="evaluate", overrides=overrides)


@torch.no_grad()
def _embed(encoder, texts, prefix="query: "):
    """Mean-pooled, L2-normalised backbone states, computed without DualEncoder.encode or the adapter."""
    batch = encoder.tokenizer([prefix + t for t in texts], padding=True, truncation=True, max_length=512, return_tensors="pt")
    hidden = encoder.backbone(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def _nearest_neighbour_scores(encoder, queries, candidates):
    """mteb's bitext protocol: each query's cosine nearest candidate; gold is the same line."""
    predicted = (_embed(encoder, queries) @ _embed(encoder, candidates).T).argmax(1)
    gold = np.arange(len(queries))
    return accuracy_score(gold, predicted), f1_score(gold, predicted, average="weighted", zero_division=0)


def test_tatoeba_done_means_default_backbone(tatoeba_dir, tmp_path, cache_dir, caplog, evaluated_encoders):
    out = tmp_path / "run"
    cfg = _compose([
        "benchmark=mteb", "benchmark.tasks=[Tatoeba]", f"benchmark.data_dir={tatoeba_dir}",
        "benchmark.languages=[deu,swh,fra]", f"paths.output_dir={out}", f"paths.cache_dir={cache_dir}",
    ])
    with caplog.at_level(logging.WARNING):
        metrics = run_evaluation(cfg)
    assert "fra" in caplog.text  # requested, no files: said, and the rest evaluated
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    assert sorted(k for k in metrics if k.endswith("/accuracy")) == ["mteb/Tatoeba/deu-eng/accuracy", "mteb/Tatoeba/swh-eng/accuracy"]
    (encoder,) = evaluated_encoders
    pairs, _ = read_tatoeba(tatoeba_dir, ["deu", "swh"])
    f1s = []
    for language, (xxx, eng) in pairs.items():
        accuracy, f1 = _nearest_neighbour_scores(encoder, xxx, eng)
        assert metrics[f"mteb/Tatoeba/{language}-eng/accuracy"] == pytest.approx(accuracy, abs=1e-9)
        assert metrics[f"mteb/Tatoeba/{language}-eng/f1"] == pytest.approx(f1, abs=1e-9)
        f1s.append(f1)
    assert metrics["mteb/Tatoeba/mean/f1"] == pytest.approx(np.mean(f1s), abs=1e-9)
    assert metrics["mteb/Tatoeba/deu-eng/accuracy"] > 0.8  # the real backbone, not noise
    (result_file,) = (out / "mteb" / "results").rglob("Tatoeba.json")
    assert {s["hf_subset"] for s in json.loads(result_file.read_text())["scores"]["test"]} == {"deu-eng", "swh-eng"}


def test_ntrex_both_directions_tiny_model(ntrex_dir, tmp_path, cache_dir, caplog, evaluated_encoders):
    out = tmp_path / "run"
    cfg = _compose([
        "benchmark=ntrex", f"benchmark.data_dir={ntrex_dir}", "benchmark.languages=[deu,zho-CN,tgk-Cyrl,fra]",
        "benchmark.benchmarks.mteb.max_sentences=40", "model=tiny",
        f"paths.output_dir={out}", f"paths.cache_dir={cache_dir}",
    ])
    with caplog.at_level(logging.WARNING):
        metrics = run_evaluation(cfg)
    assert "fra" in caplog.text
    columns = {"deu": "deu_Latn", "zho-CN": "zho_Hans", "tgk-Cyrl": "tgk_Cyrl"}
    subsets = {k.split("/")[2] for k in metrics if k.endswith("/accuracy")}
    assert subsets == {s for c in columns.values() for s in (f"{c}-eng_Latn", f"eng_Latn-{c}")}
    (encoder,) = evaluated_encoders
    sentences, _ = read_ntrex(ntrex_dir, list(columns), max_sentences=40)
    for code, column in columns.items():
        for (src, tgt), subset in (((code, "eng"), f"{column}-eng_Latn"), (("eng", code), f"eng_Latn-{column}")):
            accuracy, f1 = _nearest_neighbour_scores(encoder, sentences[src], sentences[tgt])
            assert metrics[f"mteb/NTREXBitextMining/{subset}/accuracy"] == pytest.approx(accuracy, abs=1e-9)
            assert metrics[f"mteb/NTREXBitextMining/{subset}/f1"] == pytest.approx(f1, abs=1e-9)


def test_ntrex_pairs_all_and_unknown_language(ntrex_dir):
    task = get_task("NTREXBitextMining")
    load_ntrex_into(task, ntrex_dir, ["deu", "rus", "swa"], 5, "all")
    # deu, rus, swa are all M2M-100 bridge languages: every ordered pair among them and English.
    assert len(task.hf_subsets) == 4 * 3 and "deu_Latn-swa_Latn" in task.hf_subsets
    assert set(task.dataset["test"].column_names) == {"eng_Latn", "deu_Latn", "rus_Cyrl", "swa_Latn"}
    with pytest.raises(ValueError, match="'xx' is not a language of mteb's NTREXBitextMining"):
        load_ntrex_into(get_task("NTREXBitextMining"), ntrex_dir, ["xx"], 5, "english")


class _RecordingEncoder:
    query_prefix, passage_prefix = "query: ", "passage: "
    query_max_length, passage_max_length = 64, 256
    dim = 2

    def __init__(self):
        self.calls = []

    def encode(self, texts, role, batch_size=64, progress=True):
        self.calls.append((role, self.query_prefix, self.passage_prefix, self.query_max_length, self.passage_max_length))
        return torch.ones(len(texts), 2)


@pytest.mark.parametrize(
    ("symmetric_role", "prompt_type", "expected"),
    [
        ("query", PromptType.query, ("query", "query: ")),
        ("query", PromptType.document, ("passage", "passage: ")),
        ("query", None, ("query", "query: ")),
        ("passage", None, ("passage", "passage: ")),
        ("none", None, ("query", "")),
    ],
)
def test_prompt_per_task_type(symmetric_role, prompt_type, expected):
    encoder = _RecordingEncoder()
    adapter = DualEncoderForMteb(encoder, symmetric_role=symmetric_role, max_length=512)
    task = get_task("STS22" if prompt_type is None else "SciFact")
    out = adapter.encode([{"text": ["a", "b"]}], task_metadata=task.metadata, hf_split="test", hf_subset="default", prompt_type=prompt_type)
    assert out.shape == (2, 2)
    role, q_prefix, p_prefix, q_len, p_len = encoder.calls[0]
    assert (role, q_prefix if role == "query" else p_prefix) == expected
    assert q_len == p_len == 512
    assert (encoder.query_prefix, encoder.query_max_length) == ("query: ", 64)  # restored afterwards


def test_results_carry_the_models_name_and_weights_revision(tmp_path):
    """mteb files results under name/revision: a run's model is named by its card or run dir, and two
    trainings with different weights never share a revision."""
    run = tmp_path / "hybrid-seed1"
    (run / "model").mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    (run / "model" / "model.safetensors").write_bytes(b"weights one")
    encoder = _RecordingEncoder()
    encoder.name_or_path = str(run / "model")
    name, revision = mteb_tasks.model_identity(encoder)
    assert name == "local/hybrid-seed1" and revision == hashlib.sha256(b"weights one").hexdigest()[:12]
    (run / "model" / "README.md").write_text("---\nmodel-index:\n- name: someone/hybrid-small\n---\n# card\n")
    (run / "model" / "model.safetensors").write_bytes(b"weights two")
    meta = DualEncoderForMteb(encoder).mteb_model_meta
    assert (meta.name, meta.revision) == ("someone/hybrid-small", hashlib.sha256(b"weights two").hexdigest()[:12])
    encoder.name_or_path = "intfloat/multilingual-e5-small"
    assert mteb_tasks.model_identity(encoder) == ("intfloat/multilingual-e5-small", None)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"trained")
    encoder.weights_path = str(run / "checkpoints" / "last.ckpt")  # evaluate.py ckpt_path=...: not the base model
    assert mteb_tasks.model_identity(encoder) == ("local/hybrid-seed1-last", hashlib.sha256(b"trained").hexdigest()[:12])


def test_tatoeba_reader_errors(tmp_path):
    (tmp_path / "tatoeba.deu-eng.deu").write_text("a\nb\n", encoding="utf-8")
    (tmp_path / "tatoeba.deu-eng.eng").write_text("a\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"tatoeba\.deu-eng\.deu has 2 lines but .*tatoeba\.deu-eng\.eng has 1"):
        read_tatoeba(tmp_path)
    (tmp_path / "tatoeba.swh-eng.swh").write_text("x\n", encoding="utf-8")
    assert read_tatoeba(tmp_path, ["swh"]) == ({}, ["swh"])


def test_mteb_only_when_asked_in_all(tmp_path):
    base = ["benchmark=all", f"benchmark.benchmarks.miracl.data_dir={tmp_path}", "paths.output_dir=.", f"paths.cache_dir={tmp_path}"]
    assert "mteb" not in build_benchmarks(_compose(base).benchmark)
    tasks = build_benchmarks(_compose([*base, "+benchmark/with=mteb", "benchmark.tasks=[Tatoeba]"]).benchmark)
    assert tasks["mteb"].task_names == ["Tatoeba"]


@pytest.mark.network
def test_hub_task_runs(tmp_path, cache_dir):
    cfg = _compose([
        "benchmark=mteb", "benchmark.tasks=[Tatoeba]", "benchmark.languages=[deu]", "model=tiny",
        f"paths.output_dir={tmp_path}", f"paths.cache_dir={cache_dir}",
    ])
    metrics = run_evaluation(cfg)
    assert "mteb/Tatoeba/deu-eng/f1" in metrics


def _run(path, config, choices=None, metrics=None):
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text(json.dumps(config))
    (path / ".hydra" / "hydra.yaml").write_text(json.dumps({"hydra": {"runtime": {"choices": choices or {}}}}))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))


def _ntrex_metrics(scores):
    prefix = "mteb/NTREXBitextMining"
    out = {}
    for column, (to_eng, from_eng) in scores.items():
        out[f"{prefix}/{column}-eng_Latn/f1"] = to_eng
        out[f"{prefix}/eng_Latn-{column}/f1"] = from_eng
    return out


def test_low_resource_report(tmp_path):
    from hybatch.report.low_resource import write_report

    evals = tmp_path / "multirun" / "low_resource"
    _run(evals / "0", {"model": {}}, metrics=_ntrex_metrics({"deu_Latn": (0.9, 0.8), "swa_Latn": (0.5, 0.3), "ell_Grek": (0.7, 0.7)}))
    for n, (sampler, seed, deu, swa) in enumerate([("mono", 1, 0.95, 0.4), ("mono", 2, 0.85, 0.2), ("hybrid", 1, 0.9, 0.45)]):
        train = tmp_path / "train" / str(n)
        _run(train, {"seed": seed, "sampler": {"alpha": 0.5}, "data": {"languages": ["de", "en"]}}, {"sampler": sampler})
        scores = {"deu_Latn": (deu, deu), "swa_Latn": (swa, swa), "ell_Grek": (0.7, 0.7)}
        _run(evals / str(n + 1), {"model": {"name_or_path": str(train / "model")}}, metrics=_ntrex_metrics(scores))
    markdown = write_report([evals], tmp_path / "report")
    rows = {line.split(" | ")[0].strip("| "): line for line in markdown.splitlines()[2:]}
    assert rows["deu_Latn"] == "| deu_Latn | trained | 0.850 | +0.050 ± 0.071 | +0.050 |"
    assert rows["swa_Latn"] == "| swa_Latn | low-resource | 0.400 | -0.100 ± 0.141 | +0.050 |"
    assert "| ell_Grek | unseen | 0.700 | +0.000 ± 0.000 | +0.000 |" in markdown
    assert markdown.splitlines()[0] == "| language | group | zero-shot f1 | mono Δ | hybrid Δ |"
    # One language per group here: means without intervals; the paired difference hybrid − mono per group.
    assert "| swa_Latn | low-resource | 0.400 | -0.100 ± 0.141 | +0.050 |" in markdown
    assert "| low-resource | hybrid − mono | 1 | +0.150 | – | fewer than 5 languages: no interval |" in markdown
    for suffix in ("md", "csv", "png"):
        assert (tmp_path / "report" / f"low_resource.{suffix}").stat().st_size > 0


def test_low_resource_intervals_over_languages():
    from hybatch.report.low_resource import mean_interval, to_markdown

    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        mono = float(rng.normal(-0.04, 0.02))
        rows.append({"language": f"l{i}_Latn", "group": "low-resource", "zero-shot": 0.8, "mono": mono,
                     "hybrid": mono + 0.03 + float(rng.normal(0, 0.005)), "cross": mono})
    mean = {"language": "mean (12)", "group": "low-resource", "zero-shot": 0.8}
    for s in ("mono", "cross", "hybrid"):
        mean[s] = float(np.mean([r[s] for r in rows]))
        mean[f"{s} ci"] = mean_interval([r[s] for r in rows])
    markdown = to_markdown(["mono", "cross", "hybrid"], [*rows, mean], "f1")
    low, high = mean["mono ci"]
    assert low < mean["mono"] < high < 0
    assert "| low-resource | hybrid − mono | 12 |" in markdown and "hybrid higher |" in markdown
    assert "| low-resource | cross − mono | 12 | +0.000 | [+0.000, +0.000] | no difference measured |" in markdown
