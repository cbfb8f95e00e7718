"""Validation loss batches planned once from the held-out data: the same for every sampler."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

import pytest
from helpers import run_python
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from hybatch.config import CONFIG_DIR
from hybatch.data.corpus import CorpusError, ParallelCorpus, ParallelExample, Translation
from hybatch.data.training_data import TrainingData
from hybatch.datamodule import RetrievalDataModule
from hybatch.held_out_batches import HeldOutBatchConfig, PlannedBatchSampler, plan_held_out_batches
from hybatch.samplers import CrossLingualBatchSampler, HybridBatchSampler, MonolingualBatchSampler

REPO = Path(__file__).resolve().parents[1]
LANGS = ["en", "de", "ar"]


def corpus(n: int, langs: list[str] = LANGS, dataset: str = "qa") -> ParallelCorpus:
    return ParallelCorpus([
        ParallelExample(f"{dataset}-{i}", dataset, {lang: Translation(f"q{i} {lang}", f"p{i} {lang}") for lang in langs})
        for i in range(n)
    ])


def plan(c: ParallelCorpus, kind: str, batch_size: int = 4, world_size: int = 1, seed: int = 0, langs=LANGS):
    return plan_held_out_batches(c, langs, HeldOutBatchConfig(kind, seed=seed), batch_size, world_size)


def test_en_mono_uses_every_example_once_in_english() -> None:
    p = plan(corpus(10), "en_mono")
    items = [it for b in p.batches for it in b.items]
    assert {(it.query_lang, it.passage_lang) for it in items} == {("en", "en")}
    assert sorted(it.example for it in items) == list(range(10))
    assert [len(b.items) for b in p.batches] == [4, 4, 2] and p.left_out == 0


def test_mono_uses_every_example_in_every_language_and_cross_pairs_different_languages() -> None:
    mono = [it for b in plan(corpus(10), "mono").batches for it in b.items]
    assert Counter((it.example, it.query_lang) for it in mono) == {(i, lang): 1 for i in range(10) for lang in LANGS}
    assert all(it.query_lang == it.passage_lang for it in mono)
    cross = plan(corpus(10), "cross")
    items = [it for b in cross.batches for it in b.items]
    assert all(it.query_lang != it.passage_lang for it in items)
    assert Counter(it.example for it in items) == dict.fromkeys(range(10), len(LANGS))
    for b in cross.batches:  # never an example twice in a batch: its translations would be false negatives
        assert len({it.example for it in b.items}) == len(b.items)


def test_without_english_en_mono_is_monolingual_in_every_language() -> None:
    p = plan(corpus(8, ["de", "ar"]), "en_mono")
    assert p.languages == ("de", "ar") and {b.items[0].query_lang for b in p.batches} == {"de", "ar"}


def test_ranks_take_slices_of_the_same_global_batches() -> None:
    p = plan(corpus(11), "mono", batch_size=2, world_size=2)
    ranks = [list(PlannedBatchSampler(p, r)) for r in range(2)]
    assert [len(b.items) for b in p.batches[:3]] == [4, 4, 2]  # 11 = 4 + 4 + 2 (+ 1 left out) per language
    assert p.left_out == 3
    for a, b, whole in zip(*ranks, p.batches, strict=True):
        assert len(a) == len(b) and a + b == whole.items
    assert list(PlannedBatchSampler(p, 0)) == ranks[0]  # the same batches every epoch
    assert not hasattr(PlannedBatchSampler(p, 0), "sampler")  # Lightning finds nothing to set_epoch


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="kind='bilingual'"):
        HeldOutBatchConfig("bilingual")
    with pytest.raises(ValueError, match="unknown keys"):
        HeldOutBatchConfig.from_config({"kind": "mono", "size": 3})
    with pytest.raises(CorpusError, match="kind=cross needs two languages"):
        plan(corpus(8, ["en"]), "cross")


def datamodule(sampler, val: ParallelCorpus, **kwargs) -> RetrievalDataModule:
    data = TrainingData(corpus(40), val, corpus(12, dataset="qa"))
    return RetrievalDataModule(lambda data_dir: data, sampler, LANGS, batch_size=4, **kwargs)


SAMPLERS = {
    "mono": MonolingualBatchSampler,
    "cross": CrossLingualBatchSampler,
    "hybrid": lambda **kw: HybridBatchSampler(alpha=0.3, **kw),
}


def test_the_plan_file_is_the_same_for_every_sampler_and_run_seed(tmp_path: Path) -> None:
    files = []
    for (name, sampler), seed in zip(SAMPLERS.items(), (1, 2, 3), strict=True):
        dm = RetrievalDataModule(
            lambda data_dir: TrainingData(corpus(40), corpus(10), corpus(12)), sampler, LANGS, batch_size=4, seed=seed
        )
        dm.check()
        (tmp_path / name).mkdir()
        dm.write_run_plans(tmp_path / name)
        files.append((tmp_path / name / "val_batches.json").read_bytes())
    assert files[0] == files[1] == files[2]
    plan_json = json.loads(files[0])
    assert plan_json["kind"] == "en_mono" and plan_json["num_pairs"] == 10
    assert plan_json["batches"][0].keys() == {"dataset", "kind", "query_langs", "passage_langs", "ids"}
    assert plan_json["batches"][0]["ids"][0].startswith("qa-")


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_a_single_language_validation_set_works_with_every_sampler(sampler: str) -> None:
    dm = datamodule(SAMPLERS[sampler], corpus(10, ["en"]), collator=lambda rows: rows)
    dm.check()
    batches = list(dm.val_dataloader().batch_sampler)
    assert sum(len(b) for b in batches) == 10 and {it.query_lang for b in batches for it in b} == {"en"}


def test_a_retrieval_monitor_needs_a_validation_benchmark() -> None:
    dm = datamodule(MonolingualBatchSampler, corpus(10))
    dm.check(monitor="val/loss")
    with pytest.raises(CorpusError, match="no LAReQA benchmark"):
        dm.check(monitor="val/multi/mAP")


# --- train.py: the validation batches of two samplers; a LAReQA metric as the monitor ------------------


def run_train(args: list[str], cache_dir: Path, log: Path) -> None:
    env = {**os.environ, "HYBATCH_CACHE": str(cache_dir), "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    code, output = run_python(["train.py", *args], REPO, env, log)
    assert code == 0, output[-8000:]


def test_train_mono_and_cross_validate_on_identical_batches_and_write_run_files(tmp_path: Path, xquad_r_dir: Path, cache_dir: Path) -> None:
    common = [
        "model=tiny", f"data.data_dir={xquad_r_dir}", "data.languages=[en,de,ar]", "data.source.languages=[en,de,ar]",
        "data.source.max_articles=12", "data.batch_size=8", "trainer.max_steps=3", "trainer.val_check_interval=3",
        "trainer.log_every_n_steps=1",
        "callbacks.progress_bar=null", "export_model=false", "baseline=false", "seed=3",
    ]
    run_train([*common, "sampler=mono", f"hydra.run.dir={tmp_path / 'mono'}",
               "callbacks.model_checkpoint.monitor=val/multi/mAP", "callbacks.model_checkpoint.mode=max"], cache_dir,
              tmp_path / "mono.log")
    # The cross sampler's run would write the same plan: its data module, built as train.py builds it.
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*common, "sampler=cross", "seed=4"])
    dm = instantiate(cfg.data, sampler=instantiate(cfg.sampler), seed=cfg.seed)
    dm.check()
    (tmp_path / "cross").mkdir()
    dm.write_run_plans(tmp_path / "cross", world_size=1)
    mono, cross = ((tmp_path / s / "val_batches.json").read_bytes() for s in ("mono", "cross"))
    assert mono == cross
    assert {q for b in json.loads(mono)["batches"] for q in b["query_langs"]} == {"en"}
    split = json.loads((tmp_path / "mono" / "split.json").read_text())
    assert sum(len(split[s]) for s in ("train", "val", "test")) == 12

    # The LAReQA monitor chose the checkpoint; the false negatives masked per step were logged.
    metrics = json.loads((tmp_path / "mono" / "metrics.json").read_text())
    assert "val/multi/mAP" in metrics and "test/multi/mAP" in metrics
    assert list((tmp_path / "mono" / "checkpoints").glob("step*.ckpt"))
    with open(next((tmp_path / "mono" / "csv").rglob("metrics.csv")), newline="") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("train/masked_negatives") not in (None, "") for r in rows)

    # Every test question's values, per setting, for pooling across folds and pairing across runs.
    per_query = [json.loads(line) for line in (tmp_path / "mono" / "per_query.jsonl").read_text().splitlines()]
    assert {r["article"] for r in per_query} == set(split["test"])
    assert {r["setting"] for r in per_query} == {"mono", "cross", "multi"}
