"""Every config group composes with hydra.compose, and every option of each group too; every experiment
recipe builds its datamodule, sampler and module on tiny data."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep
from omegaconf import DictConfig, OmegaConf

from hybatch.config import CONFIG_DIR

GROUPS = sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and p.name not in ("hydra",))


def options(group: str) -> list[str]:
    """The selectable options; `_name.yaml` files are bases the options extend (conf/model/_encoder.yaml)."""
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml") if not p.stem.startswith("_"))


# The entry points' primary configs (train.py, evaluate.py, prepare_data.py); a group is composed with
# the first whose defaults list has it.
PRIMARY_CONFIGS = ("train", "evaluate", "prepare")
# Options with a mandatory value (`???`) the user gives on the command line.
REQUIRED = {"benchmark=mteb": ["benchmark.tasks=[Tatoeba]"]}


def primary_config(group: str, option: str) -> tuple[str, str]:
    """The config an option belongs to and how to select it there."""
    if group == "experiment" and evaluate_recipe(option):
        return "evaluate", f"+experiment={option}"
    for name in PRIMARY_CONFIGS:
        defaults = OmegaConf.load(Path(CONFIG_DIR) / f"{name}.yaml").get("defaults") or []
        if any(isinstance(d, (dict, DictConfig)) and group in d for d in defaults):
            return name, f"{group}={option}"
    raise AssertionError(f"no primary config ({PRIMARY_CONFIGS}) has the group {group!r} in its defaults")


def evaluate_recipe(recipe: str) -> bool:
    """Recipes that choose a benchmark are evaluate.py's (`+experiment=...`); the others train.py's."""
    defaults = OmegaConf.load(Path(CONFIG_DIR) / "experiment" / f"{recipe}.yaml").get("defaults") or []
    return any("/benchmark" in (d if isinstance(d, str) else " ".join(map(str, d))) for d in defaults)


def compose_train(overrides, config_name="train"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


CASES = [(g, o) for g in GROUPS for o in options(g)]


@pytest.mark.parametrize("group, option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_option_of_every_group_composes(group, option):
    config_name, selection = primary_config(group, option)
    cfg = compose_train([selection, *REQUIRED.get(f"{group}={option}", []), "hydra.run.dir=/tmp/x"], config_name)
    HydraConfig.instance().set_config(cfg)
    # Every interpolation resolves (${hydra:...} needs the Hydra config set above).
    resolved = {k: OmegaConf.select(cfg, k) for k in cfg if k != "hydra"}
    resolved = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in resolved.items()}
    if group != "experiment":
        assert resolved[group] is not None, f"{group}={option} composed to nothing"
    assert resolved["task_name"] is not None


def test_samplers_and_models_are_instantiable_targets():
    for name in options("sampler"):
        cfg = compose_train([f"sampler={name}", "hydra.run.dir=/tmp/x"])
        assert cfg.sampler._target_.startswith("hybatch.samplers.")
        assert cfg.sampler._partial_
    for name in options("model"):
        cfg = compose_train([f"model={name}", "hydra.run.dir=/tmp/x"])
        assert "_target_" in cfg.model


# --- every experiment recipe builds, on tiny data ------------------------------------------------------------
# What each data source is pointed at in the test (the recipes' own data are downloads or files on a cluster).
TINY_LANGUAGES = "[en,de]"


def tiny_parallel_jsonl(folder: Path, split: str, n: int) -> Path:
    """`n` en/de examples in the parallel JSONL schema (README.md), enough for the paper's batch of 100."""
    path = folder / f"{split}.jsonl"
    lines = [
        json.dumps({"id": f"{split}-{i}", "dataset": "tinyqa", "translations": {
            "en": {"query": f"what is item {i}?", "positive": f"Item {i} is a thing number {i}."},
            "de": {"query": f"was ist Ding {i}?", "positive": f"Ding {i} ist ein Ding Nummer {i}."},
        }})
        for i in range(n)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_lareqa_dir(folder: Path, languages: list[str]) -> Path:
    """One question per language in the LAReQA format: a stand-in for MLQA-R, which is a download."""
    folder.mkdir()
    for lang in languages:
        context = f"Tiny {lang} article. It has two sentences."
        squad = {"data": [{"title": "Tiny article", "paragraphs": [{
            "context": context,
            "sentences": ["Tiny article.", "It has two sentences."],
            "sentence_breaks": [[0, 17], [18, len(context)]],
            "qas": [{"id": "tiny-q1", "question": "How many sentences?", "answers": [{"text": "two", "answer_start": 26}]}],
        }]}]}
        (folder / f"{lang}.json").write_text(json.dumps(squad), encoding="utf-8")
    return folder


def data_overrides(data_group: str, xquad_r_dir: Path, tmp: Path) -> list[str]:
    if data_group == "xquad_r_split":
        return [f"data.data_dir={xquad_r_dir}", f"data.languages={TINY_LANGUAGES}",
                f"data.source.languages={TINY_LANGUAGES}", "data.source.max_articles=12", "data.batch_size=8"]
    if data_group in ("parallel_jsonl", "paper_mix"):
        mlqa_r = tiny_lareqa_dir(tmp / "mlqa-r", ["ar", "de", "en", "es", "hi", "vi", "zh"])
        (tmp / "prepared").mkdir()
        train = tiny_parallel_jsonl(tmp / "prepared", "train", 240)
        source = f"data.source.directory={train.parent}" if data_group == "paper_mix" else f"data.source.train=[{train}]"
        return [source, f"data.source.val=[{tiny_parallel_jsonl(tmp, 'val', 120)}]", f"data.languages={TINY_LANGUAGES}",
                f"data.hygiene.benchmarks.xquad_r={xquad_r_dir}", f"data.hygiene.benchmarks.mlqa_r={mlqa_r}"]
    raise AssertionError(f"no tiny data for data={data_group}: add it to data_overrides()")


def sweep_points(cfg) -> list[list[str]]:
    """Points of a recipe's sweep (`hydra.sweeper.params`) that together take every value of every axis
    (each choice, both ends of an interval) once: as many points as the longest axis, not the product."""
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    parsed = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    axes = []
    for override in parsed:
        value = override.value()
        if isinstance(value, IntervalSweep):
            values = [str(value.start), str(value.end)]
        else:
            values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.get_value_element_as_str()]
        axes.append([f"{override.key_or_group}={v}" for v in values])
    return [[axis[i % len(axis)] for axis in axes] for i in range(max(map(len, axes), default=1))]


TRAIN_RECIPES = [r for r in options("experiment") if not evaluate_recipe(r)]
EVALUATE_RECIPES = [r for r in options("experiment") if evaluate_recipe(r)]


@pytest.mark.parametrize("recipe", EVALUATE_RECIPES)
def test_every_evaluate_recipe_builds_its_benchmarks_and_encoder(recipe, tmp_path, cache_dir):
    """An evaluate.py recipe with model=tiny: the benchmark tasks and the encoder instantiate (its data
    are ../shared files or downloads; evaluating them is the docs and benchmark tests' business)."""
    from hydra.utils import instantiate

    from hybatch.evaluation.runner import build_benchmarks

    cfg = compose_train([f"+experiment={recipe}", "model=tiny", f"hydra.run.dir={tmp_path}"], "evaluate")
    HydraConfig.instance().set_config(cfg)
    tasks = build_benchmarks(cfg.benchmark)
    assert tasks and all(callable(getattr(task, "evaluate", None)) for task in tasks.values()), tasks
    assert callable(instantiate(cfg.model).encode)


@pytest.mark.parametrize("recipe", TRAIN_RECIPES)
def test_every_train_recipe_builds_its_datamodule_sampler_and_module(recipe, tmp_path, xquad_r_dir, cache_dir):
    """Each recipe, at every point of its sweep, with model=tiny and its data source on tiny data: the
    datamodule loads, the sampler is the recipe's with its swept values, the module and a batch build."""
    from hydra.utils import instantiate

    from hybatch.collate import PairCollator
    from hybatch.training import build_checked

    base = compose_train([f"experiment={recipe}", "model=tiny", f"hydra.run.dir={tmp_path}"])
    data_group = base.hydra.runtime.choices["data"]
    fixed = [f"experiment={recipe}", "model=tiny", f"hydra.run.dir={tmp_path}", *data_overrides(data_group, xquad_r_dir, tmp_path)]
    points = sweep_points(base)
    assert points, recipe
    encoder = None
    for point in points:
        cfg = compose_train([*fixed, *point])
        HydraConfig.instance().set_config(cfg)
        if encoder is None or any(o.startswith(("model", "module")) for o in point):
            datamodule, encoder, module, ckpt_path, _ = build_checked(cfg, tmp_path)
            assert ckpt_path is None
        else:  # the same encoder and module as the last point: only the data and the sampler change
            datamodule = instantiate(cfg.data, sampler=instantiate(cfg.sampler), seed=cfg.seed)
            datamodule.collator = PairCollator.from_encoder(encoder)
        sampler = datamodule.make_sampler("train")
        assert f"{type(sampler).__module__}.{type(sampler).__name__}" == cfg.sampler._target_, point
        if "alpha" in cfg.sampler:
            assert sampler.alpha == pytest.approx(cfg.sampler.alpha), point
        assert module.hparams.lr == pytest.approx(cfg.module.lr) and module.encoder is encoder
        batch = next(iter(datamodule.train_dataloader()))
        assert len(batch["ids"]) == cfg.data.batch_size, point
        pairs = set(zip(batch["query_lang"], batch["passage_lang"]))
        fixed_alpha = {"MonolingualBatchSampler": 1.0, "CrossLingualBatchSampler": 0.0}
        alpha = fixed_alpha.get(type(sampler).__name__) if "alpha" not in cfg.sampler else sampler.alpha
        if alpha in (0.0, 1.0):  # the batch type is certain: one language throughout, or none shared by a pair
            assert (len(pairs) == 1 and len(set(next(iter(pairs)))) == 1) if alpha == 1.0 else all(q != c for q, c in pairs), point
