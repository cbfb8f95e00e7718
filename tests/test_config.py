"""Every config group composes with hydra.compose, and every option of each group too."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from hybatch.config import CONFIG_DIR

GROUPS = sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and p.name not in ("hydra",))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


# Groups that only evaluate.py uses.
EVALUATE_GROUPS = ("benchmark",)


def compose_train(overrides, config_name="train"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


CASES = [(g, o) for g in GROUPS for o in options(g)]


@pytest.mark.parametrize("group, option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_option_of_every_group_composes(group, option):
    config_name = "evaluate" if group in EVALUATE_GROUPS else "train"
    cfg = compose_train([f"{group}={option}", "hydra.run.dir=/tmp/x"], config_name)
    HydraConfig.instance().set_config(cfg)
    # Every interpolation resolves (${hydra:...} needs the Hydra config set above).
    resolved = {k: OmegaConf.select(cfg, k) for k in cfg if k != "hydra"}
    resolved = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in resolved.items()}
    if group != "experiment":
        assert resolved[group] is not None, f"{group}={option} composed to nothing"
    assert resolved["seed"] is not None


def test_samplers_and_models_are_instantiable_targets():
    for name in options("sampler"):
        cfg = compose_train([f"sampler={name}", "hydra.run.dir=/tmp/x"])
        assert cfg.sampler._target_.startswith("hybatch.samplers.")
        assert cfg.sampler._partial_
    for name in options("model"):
        cfg = compose_train([f"model={name}", "hydra.run.dir=/tmp/x"])
        assert "_target_" in cfg.model
