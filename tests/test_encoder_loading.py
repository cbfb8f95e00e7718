"""What `evaluate.py` evaluates with the default config (model=me5_small_bundled): a run's exported
folder, a sentence-transformers folder or a checkpoint alone, each with its own settings and weights.

One tiny training run (in process) serves every test; `eval_config` composes evaluate.yaml with the
given command-line overrides as `evaluate.py` would, on the first articles of XQuAD-R en/de.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from torch import nn

from hybatch.backbones.loading import load_encoder
from hybatch.config import CONFIG_DIR
from hybatch.data.lareqa_benchmarks import load_lareqa_benchmark
from hybatch.encoder.checkpoints import MODEL_CONFIG_KEY, CheckpointMismatchError, load_tensors_only
from hybatch.evaluation.lareqa_scoring import evaluate_lareqa
from hybatch.evaluation.runner import run_evaluation
from hybatch.training import run_training

pytestmark = pytest.mark.usefixtures("one_thread")


def job_config(config_name: str, overrides: list[str]) -> DictConfig:
    """The config as `hydra.main` hands it to the job: the Hydra node set aside, readable through HydraConfig."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture(scope="module")
def small_xquad_r(tmp_path_factory, xquad_r_dir) -> Path:
    """The first 3 (parallel) articles of XQuAD-R en and de: ~150 questions a language."""
    folder = tmp_path_factory.mktemp("xquad-r-small")
    for lang in ("en", "de"):
        full = json.loads((xquad_r_dir / f"{lang}.json").read_text(encoding="utf-8"))
        (folder / f"{lang}.json").write_text(json.dumps({**full, "data": full["data"][:3]}), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, xquad_r_dir, cache_dir) -> Path:
    """Three steps of model=tiny: `model/` (the export) and `checkpoints/last.ckpt` hold the same weights."""
    run_dir = tmp_path_factory.mktemp("tiny-run")
    run_training(job_config("train", [
        "model=tiny", f"data.data_dir={xquad_r_dir}", "data.languages=[en,de]", "data.source.languages=[en,de]",
        "data.source.max_articles=12", "data.batch_size=8", "trainer.max_steps=3", "test=false", "baseline=false",
        "optimized_metric=null", "callbacks.progress_bar=null", f"paths.output_dir={run_dir}",
        f"paths.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}",
    ]))  # fmt: skip
    return run_dir


def eval_config(tmp_path: Path, cache_dir: Path, data_dir: Path, *overrides: str) -> DictConfig:
    return job_config("evaluate", [
        "benchmark.languages=[en,de]", f"benchmark.data_dir={data_dir}", f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={tmp_path}", f"hydra.run.dir={tmp_path}", *overrides,
    ])  # fmt: skip


def state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in encoder.state_dict().items()}


def test_run_folder_and_checkpoint_alone_give_the_trained_encoder(tiny_run, tmp_path, cache_dir, small_xquad_r):
    """The default config with model.name_or_path=<run>/model, and ckpt_path alone: the run's encoder,
    its settings (not the default config's) and the same metrics."""
    settings = json.loads((tiny_run / "model" / "hybatch_encoder.json").read_text())
    assert settings["passage_max_length"] == 128  # model=tiny's, not the default config's 256
    ckpt_cfg = eval_config(tmp_path / "ckpt", cache_dir, small_xquad_r, f"ckpt_path={tiny_run / 'checkpoints' / 'last.ckpt'}")
    folder = load_encoder(eval_config(tmp_path, cache_dir, small_xquad_r, f"model.name_or_path={tiny_run / 'model'}"))
    ckpt = load_encoder(ckpt_cfg)
    for encoder in (folder, ckpt):
        assert {k: encoder.settings()[k] for k in settings} == settings
    assert all(p.requires_grad for p in ckpt.parameters())  # model=tiny's config, not the default's frozen embeddings
    ours, theirs = state(folder), state(ckpt)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

    metrics = run_evaluation(ckpt_cfg)
    want = evaluate_lareqa(load_lareqa_benchmark("xquad_r", ["en", "de"], data_dir=small_xquad_r), folder, progress=False)
    assert {k.removeprefix("xquad_r/"): v for k, v in metrics.items()} == pytest.approx(want, abs=1e-6)
    assert json.loads((tmp_path / "ckpt" / "metrics.json").read_text())["xquad_r/multi/mAP"] == pytest.approx(want["multi/mAP"])


class SentenceTransformerEncoder:
    """A sentence-transformers model behind the encoder interface the benchmarks call."""

    def __init__(self, model) -> None:
        self.model = model

    def encode(self, texts, role, batch_size: int = 64, progress: bool = True) -> torch.Tensor:
        return torch.from_numpy(self.model.encode(list(texts), prompt_name=role, batch_size=batch_size))


def test_a_sentence_transformers_folder_is_evaluated_with_its_own_settings(tiny_run, tmp_path, cache_dir, small_xquad_r):
    """CLS pooling, a Dense layer, other prompts and max_seq_length 48: all differ from the default config's."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    torch.manual_seed(0)
    model = SentenceTransformer(
        modules=[
            Transformer(str(tiny_run / "model"), max_seq_length=48),
            Pooling(32, pooling_mode="cls"),
            Dense(32, 16, activation_function=nn.Tanh()),
            Normalize(),
        ],
        prompts={"query": "q: ", "passage": "p: "},
        device="cpu",
    )
    model.save(str(tmp_path / "st"))
    cfg = eval_config(tmp_path / "eval", cache_dir, small_xquad_r, f"model.name_or_path={tmp_path / 'st'}")
    encoder = load_encoder(cfg)
    assert (encoder.pooling, encoder.query_prefix, encoder.passage_prefix, encoder.dim) == ("cls", "q: ", "p: ", 16)
    assert (encoder.query_max_length, encoder.passage_max_length) == (48, 48)
    metrics = run_evaluation(cfg)
    bench = load_lareqa_benchmark("xquad_r", ["en", "de"], data_dir=small_xquad_r)
    want = evaluate_lareqa(bench, SentenceTransformerEncoder(model.eval()), progress=False)
    assert {k.removeprefix("xquad_r/"): v for k, v in metrics.items()} == pytest.approx(want, abs=1e-4)


def test_a_chosen_model_of_another_backbone_is_refused_by_name(tiny_run, tmp_path, cache_dir, small_xquad_r):
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    for group, name in (("me5_small_bundled", "me5_small_bundled"), ("xlmr_base", "FacebookAI/xlm-roberta-base")):
        cfg = eval_config(tmp_path, cache_dir, small_xquad_r, f"model={group}", f"ckpt_path={ckpt}")
        with pytest.raises(CheckpointMismatchError, match=rf"trained with model '.*tiny_dual_encoder', but the chosen model is '.*{name}'"):
            load_encoder(cfg)
    # The checkpoint's own group, chosen explicitly, and a setting changed on top of the checkpoint's config.
    assert load_encoder(eval_config(tmp_path, cache_dir, small_xquad_r, "model=tiny", f"ckpt_path={ckpt}")).dim == 32
    longer = load_encoder(eval_config(tmp_path, cache_dir, small_xquad_r, "model.query_max_length=16", f"ckpt_path={ckpt}"))
    assert (longer.query_max_length, longer.passage_max_length, longer.dim) == (16, 128, 32)


def test_a_checkpoint_without_its_model_config_asks_for_one(tiny_run, tmp_path, cache_dir, small_xquad_r):
    checkpoint = load_tensors_only(tiny_run / "checkpoints" / "last.ckpt")
    del checkpoint["hyper_parameters"][MODEL_CONFIG_KEY]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    with pytest.raises(CheckpointMismatchError, match="does not record the model config.*model=<the run's model group>"):
        load_encoder(eval_config(tmp_path, cache_dir, small_xquad_r, f"ckpt_path={tmp_path / 'old.ckpt'}"))


def test_separate_towers_export_as_one_sentence_transformer_with_a_router(tmp_path, cache_dir):
    """Query and passage towers are ONE folder: sentence-transformers loads it as a Router (encode_query
    -> query tower, encode_document -> passage tower, prompts included), we load it as our encoder, and
    each tower's weights are stored once."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from hybatch.backbones.builders import tiny_dual_encoder
    from hybatch.encoder import DualEncoder

    encoder = tiny_dual_encoder(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, init_seed=0,
                                cache_dir=str(cache_dir), query_prefix="query: ", passage_prefix="passage: ",
                                separate_towers=True)  # fmt: skip
    with torch.no_grad():
        for p in encoder.passage_backbone.parameters():
            p.add_(0.05)  # the towers differ, as after training
    folder = encoder.save_pretrained(tmp_path / "model")
    assert len(list(folder.rglob("*.safetensors"))) == 2
    model = SentenceTransformer(str(folder), device="cpu")
    texts = ["Wie viele Punkte gab die Verteidigung ab?", "The Panthers defense gave up just 308 points."]
    ours = DualEncoder.from_pretrained(str(folder))
    want_q, want_p = (ours.encode(texts, role, progress=False).numpy() for role in ("query", "passage"))
    np.testing.assert_allclose(model.encode_query(texts), want_q, atol=1e-6)
    np.testing.assert_allclose(model.encode_document(texts), want_p, atol=1e-6)
    np.testing.assert_allclose(model.encode(texts, prompt_name="passage"), want_p, atol=1e-6)
    assert np.abs(want_q - want_p).max() > 1e-3
