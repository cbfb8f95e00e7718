"""Cross-validation over XQuAD-R articles: K disjoint test folds covering every article once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from hybatch.config import CONFIG_DIR
from hybatch.data.xquad_r_split import SplitConfigError, load_xquad_r_split, split_articles

ARTICLES = [f"article {i}" for i in range(48)]


def folds(k: int, seed: int = 0, articles=ARTICLES) -> list[dict[str, list[str]]]:
    return [split_articles(articles, {"val": 0.1, "folds": k, "fold": i}, seed) for i in range(k)]


@pytest.mark.parametrize("k", [2, 5, 7, 48])
def test_test_folds_are_disjoint_and_cover_every_article(k: int) -> None:
    parts = folds(k)
    tests = [set(p["test"]) for p in parts]
    assert sum(len(t) for t in tests) == len(ARTICLES) and set().union(*tests) == set(ARTICLES)
    assert max(map(len, tests)) - min(map(len, tests)) <= 1
    for p in parts:
        train, val, test = (set(p[s]) for s in ("train", "val", "test"))
        assert not (train & val or train & test or val & test)
        assert train | val | test == set(ARTICLES)
        assert len(val) == 5 and train


def test_folds_are_seeded_and_validation_differs_between_folds() -> None:
    assert folds(5, seed=3) == folds(5, seed=3)
    assert folds(5, seed=3)[0]["test"] != folds(5, seed=4)[0]["test"]
    assert len({tuple(p["val"]) for p in folds(5)}) > 1


@pytest.mark.parametrize(
    "split, message",
    [
        ({"val": 0.1, "folds": 5}, "both data.source.split.folds"),
        ({"val": 0.1, "folds": 5, "fold": 5}, r"fold=5: expected an integer in \[0, 4\]"),
        ({"val": 0.1, "folds": 1, "fold": 0}, "folds=1"),
        ({"val": ["article 1"], "folds": 5, "fold": 0}, "with folds, expected a fraction"),
        ({"val": 0.95, "folds": 2, "fold": 0}, "leaves no training article"),
    ],
)
def test_bad_fold_configs_are_refused(split: dict, message: str) -> None:
    with pytest.raises(SplitConfigError, match=message):
        split_articles(ARTICLES, split, 0)


def test_xquad_r_folds_split_the_48_articles_and_their_questions(xquad_r_dir: Path) -> None:
    seen: set[str] = set()
    for fold in range(5):
        data = load_xquad_r_split(xquad_r_dir, languages=["en"], split={"val": 0.1, "folds": 5, "fold": fold})
        assert seen.isdisjoint(data.split["test"])
        seen |= set(data.split["test"])
        for name in ("train", "val", "test"):
            assert {ex.article for ex in getattr(data, name).examples} == set(data.split[name])
        assert {q.article for q in data.test_benchmark.questions} == set(data.split["test"])
    assert len(seen) == 48


def test_the_cv_recipe_sweeps_samplers_and_folds(xquad_r_dir: Path, tmp_path: Path) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=sampler_comparison_cv"], return_hydra_config=True)
        params = dict(cfg.hydra.sweeper.params)
        assert params["sampler"] == "mono,cross,hybrid" and params["data.source.split.fold"] == "0,1,2,3,4"
        assert cfg.data.source.split.folds == 5
        # One job of the sweep: its datamodule writes split.json with that fold's test articles.
        job = compose(
            config_name="train",
            overrides=["experiment=sampler_comparison_cv", "data.source.split.fold=3", "sampler=cross",
                       f"data.data_dir={xquad_r_dir}", "data.languages=[en,de]", "data.source.languages=[en,de]"],
        )
    dm = instantiate(job.data, sampler=instantiate(job.sampler), seed=job.seed)
    dm.check()
    dm.write_run_plans(tmp_path)
    split = json.loads((tmp_path / "split.json").read_text())
    want = load_xquad_r_split(xquad_r_dir, languages=["en"], split={"val": 0.1, "folds": 5, "fold": 3}).split
    assert split == want and len(split["test"]) in (9, 10)
