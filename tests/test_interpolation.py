"""Weight interpolation (WiSE-FT): the math, the λ selection rules, train.py interpolation=wise_ft, the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hybatch.interpolation import (
    InterpolationError,
    WeightInterpolation,
    check_compatible,
    choose_lambda,
    cpu_state,
    curve_metrics,
    interpolate_states,
    load_interpolated,
    merge_lora,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer(cache_dir):
    from hybatch.backbones.bundled import bundled_tokenizer

    return bundled_tokenizer(cache_dir)


@pytest.fixture
def tiny(tokenizer, monkeypatch):
    """`model=tiny`'s builder, with the tokenizer loaded once for the module (loading it takes seconds)."""
    from hybatch.backbones import builders

    monkeypatch.setattr(builders, "bundled_tokenizer", lambda cache_dir=None: tokenizer)
    return lambda init_seed, **kwargs: builders.tiny_dual_encoder(init_seed=init_seed, **kwargs)


# --- the math ---------------------------------------------------------------------------------------
def test_endpoints_are_exact_and_the_midpoint_is_the_mean(tiny):
    start, fine = cpu_state(tiny(0)), cpu_state(tiny(1))
    target = tiny(2)
    for lam, expected in ((0.0, start), (1.0, fine)):
        load_interpolated(target, start, fine, lam)
        for key, value in target.state_dict().items():
            assert torch.equal(value, expected[key]), (lam, key)
    load_interpolated(target, start, fine, 0.5)
    floats = [k for k in start if start[k].is_floating_point()]
    assert floats and any(not torch.equal(start[k], fine[k]) for k in floats)
    for key in floats:
        mean = (start[key].double() + fine[key].double()) / 2
        torch.testing.assert_close(target.state_dict()[key].double(), mean, rtol=0, atol=1e-7)
    # The functional form gives the same tensors as the in-place one.
    halfway = interpolate_states(start, fine, 0.5)
    assert all(torch.equal(halfway[k], v) for k, v in target.state_dict().items())


def test_low_precision_weights_are_interpolated_in_float32():
    start = {"w": torch.tensor([1.0, 2.0], dtype=torch.bfloat16)}
    fine = {"w": torch.tensor([3.0, 2.0078125], dtype=torch.bfloat16)}
    out = interpolate_states(start, fine, 0.5)["w"]
    assert out.dtype == torch.bfloat16 and out.tolist() == [2.0, 2.0]
    assert torch.equal(interpolate_states(start, fine, 1.0)["w"], fine["w"])


def test_a_key_only_on_one_side_or_a_different_shape_is_refused_by_name():
    start = {"a.weight": torch.zeros(2, 3), "b.bias": torch.zeros(3)}
    with pytest.raises(InterpolationError, match=r"'b\.bias' is only in the start model"):
        check_compatible(start, {"a.weight": torch.ones(2, 3)})
    with pytest.raises(InterpolationError, match=r"'c' is only in the fine-tuned model"):
        check_compatible(start, {**start, "c": torch.ones(1)})
    with pytest.raises(InterpolationError, match=r"'a\.weight' has shape \(2, 3\) in the start model and \(3, 2\)"):
        interpolate_states(start, {"a.weight": torch.ones(3, 2), "b.bias": torch.ones(3)}, 0.5)
    with pytest.raises(InterpolationError, match=r"'ids' is a non-float tensor"):
        check_compatible({"ids": torch.arange(3)}, {"ids": torch.arange(1, 4)})


def test_models_of_different_size_are_refused_by_name(tiny):
    with pytest.raises(InterpolationError, match=r"key 'backbone\..*' has shape"):
        load_interpolated(tiny(0), cpu_state(tiny(0, intermediate_size=48)), cpu_state(tiny(1)), 0.5)


def test_lora_adapters_are_merged_into_plain_weights(tiny):
    pytest.importorskip("peft")
    plain = cpu_state(tiny(0))
    adapted = tiny(0, lora={"r": 2, "target_modules": ["query", "value"]})
    for name, param in adapted.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param)
    merged = cpu_state(merge_lora(adapted))
    check_compatible(plain, merged)  # the same keys as the model without adapters
    changed = {k for k in plain if not torch.equal(plain[k], merged[k])}
    assert changed and all(".query." in k or ".value." in k for k in changed)


# --- the selection rules ----------------------------------------------------------------------------
def point(mono, cross, multi, bias=10.0):
    return {"mono/mAP": mono, "cross/mAP": cross, "multi/mAP": multi, "multi/lang_bias": bias}


CURVE = {
    0.0: point(0.80, 0.60, 0.30),  # mean .567
    0.25: point(0.80, 0.66, 0.42),  # mean .627
    0.5: point(0.79, 0.70, 0.50),  # mean .663
    0.75: point(0.77, 0.71, 0.55),  # mean .677
    1.0: point(0.74, 0.71, 0.58),  # mean .677 (tie with 0.75)
}


def test_best_mean_takes_the_best_mean_and_the_smaller_lambda_on_a_tie():
    assert choose_lambda(CURVE, "best_mean") == 0.75
    assert choose_lambda({1.0: point(0.5, 0.5, 0.5), 0.0: point(0.5, 0.5, 0.5)}, "best_mean") == 0.0
    assert choose_lambda({0.0: point(0.1, 0.1, 0.1), 1.0: point(0.9, 0.9, 0.9)}, "best_mean") == 1.0


def test_constrained_takes_the_best_multi_within_the_mono_margin():
    assert choose_lambda(CURVE, "constrained", margin=0.0) == 0.25  # mono .80 >= .80
    assert choose_lambda(CURVE, "constrained", margin=0.015) == 0.5  # mono .79 >= .785
    assert choose_lambda(CURVE, "constrained", margin=0.03) == 0.75
    assert choose_lambda(CURVE, "constrained", margin=1.0) == 1.0
    tie = {0.0: point(0.8, 0.5, 0.4), 0.5: point(0.8, 0.5, 0.6), 1.0: point(0.8, 0.5, 0.6)}
    assert choose_lambda(tie, "constrained", margin=0.0) == 0.5
    with pytest.raises(InterpolationError, match="λ=0 must be in the grid"):
        choose_lambda({k: v for k, v in CURVE.items() if k > 0}, "constrained")


def test_bad_rules_and_grids_are_refused():
    with pytest.raises(InterpolationError, match="expected one of"):
        choose_lambda(CURVE, "best")
    with pytest.raises(InterpolationError, match="expected one of"):
        WeightInterpolation(rule="best")
    with pytest.raises(InterpolationError, match=r"distinct values in \[0, 1\]"):
        WeightInterpolation(lambdas=[0.5, 1.5])
    with pytest.raises(InterpolationError, match="needs λ=0"):
        WeightInterpolation(lambdas=[0.5, 1.0], rule="constrained")
    with pytest.raises(InterpolationError, match="no 'cross/mAP'"):
        choose_lambda({0.0: {"mono/mAP": 0.5, "multi/mAP": 0.5}}, "best_mean")


def test_curve_metrics_keys():
    metrics = curve_metrics(CURVE, 0.75)
    assert metrics["interpolation/lambda"] == 0.75
    assert metrics["interpolation/val/0.25/cross/mAP"] == 0.66
    assert metrics["interpolation/val/1/multi/lang_bias"] == 10.0
    assert len(metrics) == 1 + 4 * len(CURVE)


# --- train.py interpolation=wise_ft ------------------------------------------------------------------
def test_train_with_wise_ft_tests_and_exports_the_chosen_interpolation(tmp_path, xquad_r_dir, cache_dir, tiny):
    run_dir = tmp_path / "run"
    env = {**os.environ, "HYBATCH_CACHE": str(cache_dir), "WANDB_MODE": "offline"}
    args = [
        "model=tiny", f"data.data_dir={xquad_r_dir}", "data.languages=[en,de]", "data.source.languages=[en,de]",
        "data.source.max_articles=12", "data.batch_size=8", "+trainer.limit_train_batches=4", "module.lr=1e-3",
        "callbacks.progress_bar=null", "baseline=false", "interpolation=wise_ft", "interpolation.rule=best_mean",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    metrics = json.loads((run_dir / "metrics.json").read_text())
    chosen = metrics["interpolation/lambda"]
    assert chosen in (0.0, 0.25, 0.5, 0.75, 1.0)
    for lam in ("0", "0.25", "0.5", "0.75", "1"):
        for key in ("mono/mAP", "cross/mAP", "multi/mAP", "multi/lang_bias"):
            assert f"interpolation/val/{lam}/{key}" in metrics, sorted(metrics)
    # λ=1 is the best checkpoint (the run's one validation), scored as the val/... metrics were.
    for key in ("mono/mAP", "cross/mAP", "multi/mAP"):
        assert metrics[f"interpolation/val/1/{key}"] == pytest.approx(metrics[f"val/{key}"], abs=1e-6)
    means = {lam: sum(metrics[f"interpolation/val/{lam:g}/{s}/mAP"] for s in ("mono", "cross", "multi")) for lam in (0, 0.25, 0.5, 0.75, 1)}
    assert means[chosen] == max(means.values())
    assert "test/multi/mAP" in metrics
    assert (run_dir / "interpolation" / "curve.csv").is_file() and (run_dir / "interpolation" / "curve.png").stat().st_size > 0

    # The export is θ(λ*) between the untrained tiny model and the best checkpoint's encoder.
    from hybatch.encoder import DualEncoder

    (best,) = [p for p in (run_dir / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    fine = {k.removeprefix("encoder."): v for k, v in torch.load(best, map_location="cpu", weights_only=True)["state_dict"].items() if k.startswith("encoder.")}
    expected = interpolate_states(cpu_state(tiny(0)), fine, chosen)
    exported = cpu_state(DualEncoder.from_pretrained(str(run_dir / "model")))
    assert exported.keys() == expected.keys()
    assert all(torch.equal(exported[k], expected[k]) for k in expected)
    if chosen not in (0.0, 1.0):
        assert any(not torch.equal(exported[k], fine[k]) for k in fine)


# --- the CLI ----------------------------------------------------------------------------------------
def test_cli_writes_folders_that_load_in_sentence_transformers_and_back(tmp_path, tiny):
    from sentence_transformers import SentenceTransformer

    from hybatch.encoder import DualEncoder
    from hybatch.interpolation.__main__ import main

    start, fine = tiny(0), tiny(1, query_prefix="query: ")
    start.save_pretrained(tmp_path / "start")
    fine.save_pretrained(tmp_path / "fine")
    main([str(tmp_path / "start"), str(tmp_path / "fine"), "--lambda", "0.5", str(tmp_path / "half")])
    main([str(tmp_path / "start"), str(tmp_path / "fine"), "--lambda", "0", "--lambda", "1", str(tmp_path / "grid")])
    assert sorted(p.name for p in (tmp_path / "grid").iterdir()) == ["lambda_0", "lambda_1"]
    assert all((tmp_path / "grid" / name / "modules.json").is_file() for name in ("lambda_0", "lambda_1"))

    reloaded = cpu_state(DualEncoder.from_pretrained(str(tmp_path / "half")))
    expected = interpolate_states(cpu_state(start), cpu_state(fine), 0.5)
    assert reloaded.keys() == expected.keys()
    assert all(torch.equal(reloaded[k], expected[k]) for k in expected)

    model = SentenceTransformer(str(tmp_path / "half"), device="cpu")
    assert model.prompts["query"] == "query: "
    ours = DualEncoder.from_pretrained(str(tmp_path / "half")).encode(["Wie viele Punkte?"], "query", progress=False)
    theirs = torch.from_numpy(model.encode(["Wie viele Punkte?"], prompt_name="query"))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_sweep_report_shows_the_chosen_lambdas():
    from hybatch.report.sweep import RunKey, summarise, to_markdown

    scores = {"test/mono/mAP": 0.8, "test/cross/mAP": 0.7, "test/multi/mAP": 0.6}
    groups = {
        RunKey("tiny", "hybrid"): [{**scores, "interpolation/lambda": 0.5}, {**scores, "interpolation/lambda": 0.75}],
        RunKey("tiny", "zero-shot"): [scores],
    }
    markdown = to_markdown(*summarise(groups))
    assert "| model | batches | runs | λ | mono mAP |" in markdown
    assert "| tiny | hybrid | 2 | 0.5, 0.75 | 0.800 ± 0.000 |" in markdown
    assert "| tiny | zero-shot | 1 | – | 0.800 |" in markdown
    assert "λ" not in to_markdown(*summarise({RunKey("tiny", "zero-shot"): [scores]}))


def test_code_defaults_are_the_config_defaults():
    import inspect

    from omegaconf import OmegaConf

    from hybatch.config import CONFIG_DIR
    from hybatch.interpolation import WeightInterpolation

    yaml = OmegaConf.load(f"{CONFIG_DIR}/interpolation/wise_ft.yaml")
    params = inspect.signature(WeightInterpolation).parameters
    for key in ("lambdas", "rule", "margin"):
        default = params[key].default
        assert (list(default) if key == "lambdas" else default) == OmegaConf.to_object(yaml)[key], key


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"trainer": {"strategy": "fsdp"}}, "trainer=fsdp keeps sharded"),
        ({"trainer": {"strategy": {"_target_": "lightning.pytorch.strategies.FSDPStrategy"}}}, "trainer=fsdp keeps sharded"),
        ({"model": {"projection_dim": 64}}, "model.projection_dim=64"),
    ],
)
def test_interpolation_settings_are_refused_before_training(overrides, message):
    """`interpolation_config` runs in `build_checked`, before any model is loaded or trained."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from hybatch.interpolation import interpolation_config

    cfg = OmegaConf.merge(
        {"interpolation": {"_target_": "hybatch.interpolation.WeightInterpolation"}, "trainer": {}, "model": {}}, overrides
    )
    with pytest.raises(InterpolationError, match=message):
        interpolation_config(cfg, SimpleNamespace(val_benchmark=object()))
