"""Bad input is answered at once, by an error naming the place and what was expected, and a run
that meets it writes nothing: bad data lines, configs, checkpoints, backbones, and a diverging loss."""

import inspect
import json
import re
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from omegaconf.basecontainer import BaseContainer
from transformers import BertConfig, BertModel

from hybatch.callbacks import StepCheckpoint
from hybatch.collate import PairCollator
from hybatch.config import CONFIG_DIR
from hybatch.data.corpus import CorpusError, ParallelCorpus
from hybatch.data.hygiene import BenchmarkHygiene
from hybatch.data.lareqa_benchmarks import LareqaFormatError, load_lareqa_language
from hybatch.data.parallel_jsonl import JsonlFormatError, load_parallel_jsonl, read_parallel_jsonl
from hybatch.data.training_data import TrainingData
from hybatch.datamodule import RetrievalDataModule
from hybatch.downloads import DataSourceError
from hybatch.encoder import DualEncoder, EncoderConfigError
from hybatch.encoder.checkpoints import (
    CheckpointLoadError,
    CheckpointMismatchError,
    load_encoder_weights,
    load_tensors_only,
)
from hybatch.lightning_module import DualEncoderModule
from hybatch.samplers import CrossLingualBatchSampler, HybridBatchSampler, SamplerConfigError
from hybatch.training import run_training

LANGS = ("en", "de", "ar")


def line(id_, langs=LANGS):
    return json.dumps({"id": id_, "translations": {lang: {"query": f"q{id_}{lang}", "positive": f"p{id_}{lang}"} for lang in langs}})


def jsonl(path: Path, lines) -> Path:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def datamodule(path: Path, languages=LANGS, batch_size=4, sampler=None) -> RetrievalDataModule:
    return RetrievalDataModule(
        source=partial(load_parallel_jsonl, train=[str(path)]),
        sampler=sampler or partial(HybridBatchSampler, alpha=0.5),
        languages=list(languages),
        batch_size=batch_size,
    )


# --- data files ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"id": "b", "translations": ', ":2: invalid JSON at column 29: Expecting value"),
        ('{"id": "b", "translations": {"en": {"query": "q"}}}', ":2: translations.en: missing key 'positive'"),
        ('{"translations": {"en": {"query": "q", "positive": "p"}}}', ":2: missing key 'id'"),
        ('{"id": "b", "translations": {"en": {"query": "", "positive": "p"}}}', ":2: translations.en.query: expected a non-empty string"),
        ('["not", "an", "object"]', ":2: expected a JSON object, got list"),
        (b'{"id": "b", "translations": {"en": {"query": "caf\xe9", "positive": "p"}}}', ":2: not valid UTF-8 (byte 49 of the line); expected UTF-8 text"),
    ],
    ids=["malformed-json", "missing-positive", "missing-id", "empty-text", "not-an-object", "not-utf8"],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path, bad, message):
    path = jsonl(tmp_path / "train.jsonl", [line("a"), bad, line("c")])
    with pytest.raises(JsonlFormatError) as err:
        read_parallel_jsonl([path])
    assert f"{path}{message}" in str(err.value)


def test_bad_lareqa_files_name_file_line_and_json_path(tmp_path, xquad_r_dir):
    good = (xquad_r_dir / "en.json").read_bytes()
    broken = tmp_path / "broken.json"
    broken.write_bytes(good[:5000])
    with pytest.raises(LareqaFormatError, match=rf"{broken}:1: invalid JSON"):
        load_lareqa_language(broken, "en")
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'{"data": [\n{"title": "caf\xe9"}]}')
    with pytest.raises(LareqaFormatError, match=rf"{latin1}:2: not valid UTF-8"):
        load_lareqa_language(latin1, "en")
    data = json.loads(good)
    del data["data"][1]["paragraphs"][2]["context"]
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps(data))
    with pytest.raises(LareqaFormatError, match=r"data\[1\]\.paragraphs\[2\]: missing key 'context'"):
        load_lareqa_language(missing, "en")


def test_empty_split_is_refused(tmp_path):
    empty = jsonl(tmp_path / "val.jsonl", [])
    with pytest.raises(JsonlFormatError, match="no examples in"):
        read_parallel_jsonl([empty])
    dm = datamodule(tmp_path / "unused.jsonl")
    dm.source = lambda data_dir: TrainingData(ParallelCorpus([]))
    with pytest.raises(CorpusError, match="the train split is empty"):
        dm.check()


# --- data against the configuration ------------------------------------------------------------
def test_unknown_language_code(tmp_path):
    path = jsonl(tmp_path / "train.jsonl", [line(str(i)) for i in range(8)])
    with pytest.raises(CorpusError, match=r"data.languages has \['xx'\].*its languages are \['ar', 'de', 'en'\]"):
        datamodule(path, languages=["en", "xx"]).check()


def test_language_with_too_few_examples_for_a_batch(tmp_path):
    lines = [line(str(i), ("en", "de", "th") if i < 3 else ("en", "de")) for i in range(12)]
    path = jsonl(tmp_path / "train.jsonl", lines)
    with pytest.raises(CorpusError, match=r"language\(s\) \{'th': 3\} have fewer examples than one batch \(data.batch_size=4"):
        datamodule(path, languages=["en", "de", "th"]).check()


def test_batch_size_larger_than_the_data_uses_the_largest_batch_it_fills(tmp_path, caplog):
    path = jsonl(tmp_path / "train.jsonl", [line(str(i)) for i in range(10)])
    dm = datamodule(path, batch_size=16)
    with caplog.at_level("WARNING", logger="hybatch.datamodule"):
        dm.check()
        sampler = dm.make_sampler("train")
    assert sampler.batch_size == 10 and len(sampler) == 1
    assert all(len({item.example for item in batch}) == 10 for batch in sampler)  # one dataset, distinct ids
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "data.batch_size=16 x 1 device(s)" in warnings[0] and "using batch size 10" in warnings[0]
    assert dm.make_sampler("train", world_size=2, rank=1).batch_size == 5  # 10 ids over 2 devices


def test_batch_size_larger_than_a_dataset_that_cannot_fill_two_pairs(tmp_path):
    path = jsonl(tmp_path / "train.jsonl", [line("0")])
    with pytest.raises(SamplerConfigError, match=r"'train' has 1 examples, fewer than one global batch \(data.batch_size=16"):
        datamodule(path, batch_size=16).check()


def test_batch_size_larger_than_one_dataset_of_several(tmp_path):
    big = jsonl(tmp_path / "big.jsonl", [line(str(i)) for i in range(20)])
    small = jsonl(tmp_path / "small.jsonl", [line(str(i)) for i in range(5)])
    dm = datamodule(big, batch_size=16)
    dm.source = partial(load_parallel_jsonl, train=[str(big), str(small)])
    with pytest.raises(SamplerConfigError, match=r"'small' has 5 examples, fewer than one global batch \(data.batch_size=16"):
        dm.check()


@pytest.fixture
def offline(monkeypatch):
    """Every benchmark download fails as it does without internet."""
    import urllib.error

    def fail(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("hybatch.downloads.download", fail)


def training_data(tmp_path: Path, n: int) -> TrainingData:
    return TrainingData(read_parallel_jsonl([jsonl(tmp_path / "train.jsonl", [line(str(i)) for i in range(n)])]))


def test_hygiene_benchmark_unavailable_offline_warns_and_is_reported(tmp_path, offline, caplog):
    data = training_data(tmp_path, 4)
    hygiene = BenchmarkHygiene({"mlqa_r": None}, cache_dir=tmp_path / "empty-cache")
    with caplog.at_level("WARNING", logger="hybatch.data.hygiene"):
        kept = hygiene(data)
    assert len(kept.train) == 4
    assert hygiene.report()["checked"] == {} and list(hygiene.report()["unavailable"]) == ["mlqa_r"]
    assert "name resolution" in hygiene.report()["unavailable"]["mlqa_r"]
    (message,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "mlqa_r is unavailable" in message and "name resolution" in message
    assert "data.hygiene.benchmarks.mlqa_r=<directory of its files>" in message


def test_hygiene_benchmark_unavailable_with_on_unavailable_raise(tmp_path, offline):
    data = training_data(tmp_path, 1)
    with pytest.raises(DataSourceError, match=r"could not download .*set data.hygiene.benchmarks.mlqa_r=<its directory>"):
        BenchmarkHygiene({"mlqa_r": None}, cache_dir=tmp_path, on_unavailable="raise")(data)
    with pytest.raises(ValueError, match="on_unavailable='ignore'"):
        BenchmarkHygiene(on_unavailable="ignore")


def test_hygiene_benchmark_directory_given_but_missing_is_an_error(tmp_path, offline):
    data = training_data(tmp_path, 1)
    with pytest.raises(DataSourceError, match=r"no-such-dir' is not a directory.*data.hygiene.benchmarks.xquad_r"):
        BenchmarkHygiene({"xquad_r": str(tmp_path / "no-such-dir")})(data)


def test_hygiene_checks_the_benchmarks_it_has_and_skips_the_others(tmp_path, offline, xquad_r_dir):
    data = training_data(tmp_path, 4)
    hygiene = BenchmarkHygiene({"xquad_r": str(xquad_r_dir), "mlqa_r": None}, cache_dir=tmp_path)
    hygiene(data)
    report = hygiene.report()
    assert list(report["checked"]) == ["xquad_r"] and report["checked"]["xquad_r"]["questions"] > 0
    assert list(report["unavailable"]) == ["mlqa_r"]


def test_cross_lingual_sampler_with_one_language(tmp_path):
    path = jsonl(tmp_path / "train.jsonl", [line(str(i)) for i in range(10)])
    with pytest.raises(SamplerConfigError, match=r"only the language \['en'\]; leave it out of data.source.train"):
        datamodule(path, languages=["en"], sampler=partial(CrossLingualBatchSampler)).check()


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_unit_interval(tmp_path, alpha):
    path = jsonl(tmp_path / "train.jsonl", [line(str(i)) for i in range(10)])
    with pytest.raises(SamplerConfigError, match=rf"sampler.alpha={alpha}: expected a fraction in \[0, 1\]"):
        datamodule(path, sampler=partial(HybridBatchSampler, alpha=alpha)).check()


def test_checkpoint_every_n_steps_must_be_positive():
    with pytest.raises(ValueError, match="checkpoint_every_n_steps=0"):
        StepCheckpoint("/tmp/unused", 0)


# --- models and checkpoints ----------------------------------------------------------------------
def test_unknown_backbone(tmp_path):
    with pytest.raises(EncoderConfigError, match="is neither a local model folder nor a reachable Hugging Face hub id"):
        DualEncoder.from_pretrained(str(tmp_path / "no-such-model"))


@pytest.fixture(scope="module")
def tokenizer(cache_dir):
    from hybatch.backbones.bundled import bundled_tokenizer

    return bundled_tokenizer(cache_dir)


def small_encoder(tokenizer, hidden_size: int = 8) -> DualEncoder:
    """A 1-layer BERT with the real vocabulary: the tokenizer is loaded once for the whole module."""
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=514, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backbone = BertModel(config, add_pooling_layer=False)
    return DualEncoder(backbone=backbone, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def tiny_encoders(tokenizer):
    return small_encoder(tokenizer, 8), small_encoder(tokenizer, 12)


def fake_checkpoint(path: Path, encoder, backbone=None) -> Path:
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"backbone": backbone}}, path)
    return path


def test_checkpoint_of_another_backbone_is_refused_before_loading(tmp_path, tiny_encoders):
    small, wide = tiny_encoders
    ckpt = fake_checkpoint(tmp_path / "wide.ckpt", wide)
    before = {k: v.clone() for k, v in small.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=rf"{ckpt} does not fit the configured encoder.*different shapes"):
        load_encoder_weights(small, ckpt)
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())
    named = fake_checkpoint(tmp_path / "e5.ckpt", small, backbone="intfloat/multilingual-e5-small")
    with pytest.raises(CheckpointMismatchError, match="trained with backbone 'intfloat/multilingual-e5-small'"):
        load_encoder_weights(small, named)


def test_checkpoints_load_tensors_only(tmp_path, tiny_encoders):
    """A checkpoint that would unpickle arbitrary objects (code) is refused, as is a truncated one."""
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "payload": partial(print, "pwned")}, pickled)
    with pytest.raises(CheckpointLoadError, match="would run pickled code"):
        load_encoder_weights(tiny_encoders[0], pickled)
    truncated = tmp_path / "truncated.ckpt"
    fake_checkpoint(truncated, tiny_encoders[0])
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(CheckpointLoadError, match="truncated or corrupt"):
        load_tensors_only(truncated)


def test_remote_code_is_off_unless_the_user_turns_it_on():
    for path in Path(CONFIG_DIR, "model").glob("*.yaml"):
        assert OmegaConf.load(path).get("trust_remote_code", False) is False, path
    assert inspect.signature(DualEncoder.from_pretrained).parameters["trust_remote_code"].default is False


def test_configs_never_execute_strings():
    """No resolver but the project's lookups, and no eval / exec anywhere in the package."""
    import hybatch.training  # noqa: F401  (imports every module that registers resolvers)

    builtin = ("oc.", "hydra", "now", "python_version")  # Hydra's own, registered when a job is set up
    custom = {name for name in BaseContainer._resolvers if not name.startswith(builtin)}
    assert all(name.startswith("hybatch_") for name in custom), custom
    calls = re.compile(r"(?<![\w.])(eval|exec)\(")
    for path in Path(hybatch.__file__).parent.rglob("*.py"):
        assert not calls.search(path.read_text()), path


def test_every_torch_load_in_the_package_is_tensors_only():
    for path in Path(CONFIG_DIR).parent.rglob("*.py"):
        source = path.read_text()
        assert "pickle.load" not in source, path
        for call in re.findall(r"torch\.load\([^)]*\)", source):
            assert "weights_only=True" in call, (path, call)


# --- a whole run meeting bad input writes nothing -----------------------------------------------
def compose_train(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (["data.languages=[en,xx]"], CorpusError, "data.languages has ['xx']"),
        (["sampler.alpha=1.5"], SamplerConfigError, "sampler.alpha=1.5"),
        (["data.batch_size=0"], SamplerConfigError, "data.batch_size=0: expected >= 1"),
        (["sampler=cross", "data.languages=[en]"], SamplerConfigError, "draws only cross-lingual batches"),
        (["model=xlmr_base", "model.name_or_path=/no/such/model"], EncoderConfigError, "/no/such/model"),
        (["ckpt_path=WIDE"], CheckpointMismatchError, "does not fit the configured encoder"),
    ],
    ids=["language", "alpha", "batch-size", "cross-one-language", "backbone", "checkpoint"],
)
def test_a_run_meeting_bad_input_writes_nothing(tmp_path, xquad_r_dir, cache_dir, tiny_encoders, overrides, error, message):
    wide = fake_checkpoint(tmp_path / "wide.ckpt", tiny_encoders[1])  # model=tiny is 32 wide
    run_dir = tmp_path / "run"
    cfg = compose_train([
        "model=tiny", f"data.data_dir={xquad_r_dir}", "data.languages=[en,de,ar]", "data.source.languages=[en,de,ar]",
        "data.source.max_articles=12", "data.batch_size=8", f"paths.output_dir={run_dir}", f"paths.cache_dir={cache_dir}",
        *(o.replace("WIDE", str(wide)) for o in overrides),
    ])
    with pytest.raises(Exception) as err:  # noqa: PT011 - Hydra wraps errors raised while instantiating
        run_training(cfg)
    assert error in (type(err.value), type(err.value.__cause__)) and message in str(err.value)
    assert not run_dir.exists(), sorted(run_dir.rglob("*"))


# --- divergence --------------------------------------------------------------------------------
def fit_with_nan_at_step(tmp_path, tokenizer, on_nonfinite_loss: str, nan_step: int = 1):
    """Three steps; the loss of step `nan_step` (0-based) is NaN. Checkpoints every step."""
    path = jsonl(tmp_path / "train.jsonl", [line(str(i), ("en", "de")) for i in range(12)])
    encoder = small_encoder(tokenizer)
    dm = datamodule(path, languages=["en", "de"], batch_size=4)
    dm.collator = PairCollator.from_encoder(encoder)
    module = DualEncoderModule(encoder, lr=1e-3, warmup=0, on_nonfinite_loss=on_nonfinite_loss)
    loss_fn = module.loss_fn
    calls = []

    def poisoned(*args, **kwargs):
        out = type(loss_fn).forward(loss_fn, *args, **kwargs)
        calls.append(len(calls))
        return out._replace(loss=out.loss * float("nan")) if len(calls) - 1 == nan_step else out

    loss_fn.forward = poisoned
    weights = []

    class Snapshot(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            weights.append({k: v.detach().clone() for k, v in pl_module.encoder.state_dict().items()})

    trainer = pl.Trainer(
        max_steps=3, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[StepCheckpoint(tmp_path / "checkpoints", 1), Snapshot()],
    )
    return trainer, module, dm, weights


def test_nonfinite_loss_stops_the_run_before_the_weights_change(tmp_path, tokenizer):
    trainer, module, dm, weights = fit_with_nan_at_step(tmp_path, tokenizer, "raise")
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 1 \(epoch 0\).*on_nonfinite_loss=skip"):
        trainer.fit(module, datamodule=dm)
    after = module.encoder.state_dict()
    assert all(torch.equal(weights[-1][k], v) for k, v in after.items())
    last = load_tensors_only(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 1
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_nonfinite_loss_skips_the_step_when_configured(tmp_path, tokenizer):
    trainer, module, dm, weights = fit_with_nan_at_step(tmp_path, tokenizer, "skip")
    trainer.fit(module, datamodule=dm)
    assert len(weights) == 3
    assert all(torch.equal(weights[1][k], weights[2][k]) for k in weights[1])  # the NaN step changed nothing
    assert all(torch.isfinite(v).all() for v in module.encoder.state_dict().values())


def test_offline_xquad_r_names_the_override_to_type(tmp_path):
    from hybatch.data.xquad_r_split import load_xquad_r_split

    with pytest.raises(DataSourceError, match=r"pass data\.data_dir=<their directory>"):
        load_xquad_r_split(None, cache_dir=tmp_path, languages=["en"], url="http://127.0.0.1:9/{name}")
    with pytest.raises(DataSourceError, match=r"data\.data_dir='.*nowhere' is not a directory"):
        load_xquad_r_split(tmp_path / "nowhere", languages=["en"])
