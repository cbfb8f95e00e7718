"""The sweep report: grouping by model and sampler, mean and std over seeds."""

import json

import pytest
from omegaconf import OmegaConf

from hybatch.report.sweep import collect, composition_markdown, summarise, to_markdown, write_report


def fake_run(root, name, model, sampler, seed, multi_map, alpha=None, composition=None):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save({"hydra": {"runtime": {"choices": {"model": model, "sampler": sampler}}}}, run / ".hydra" / "hydra.yaml")
    OmegaConf.save({"seed": seed, "sampler": {"alpha": alpha}}, run / ".hydra" / "config.yaml")
    metrics = {"test/multi/mAP": multi_map, "test/mono/mAP": 0.8, "test/multi/lang_bias": 10.0, "baseline/test/multi/mAP": 0.3,
               **(composition or {})}
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_rows_average_seeds_and_add_the_zero_shot_baseline(tmp_path):
    fake_run(tmp_path, "0", "me5", "mono", 1, 0.40)
    fake_run(tmp_path, "1", "me5", "mono", 2, 0.50)
    fake_run(tmp_path, "2", "me5", "hybrid", 1, 0.60, alpha=0.5)
    found, rows = summarise(collect(tmp_path))
    assert found == ["test/"]
    by_sampler = {r["sampler"]: r for r in rows}
    assert [r["sampler"] for r in rows] == ["zero-shot", "mono", "hybrid"]
    assert by_sampler["mono"]["test/multi/mAP"] == pytest.approx(0.45)
    assert by_sampler["mono"]["test/multi/mAP std"] == pytest.approx(0.0707107, rel=1e-5)
    assert by_sampler["zero-shot"]["test/multi/mAP"] == pytest.approx(0.3)
    markdown = to_markdown(found, rows)
    assert "| me5 | mono | 2 |" in markdown and "0.450 ± 0.071" in markdown
    write_report(tmp_path)
    assert (tmp_path / "report.png").stat().st_size > 0


def test_alpha_labels_appear_when_alpha_varies(tmp_path):
    fake_run(tmp_path, "0", "me5", "hybrid", 1, 0.5, alpha=0.25)
    fake_run(tmp_path, "1", "me5", "hybrid", 1, 0.6, alpha=0.75)
    labels = {k.sampler for k in collect(tmp_path)}
    assert {"hybrid (alpha=0.25)", "hybrid (alpha=0.75)"} <= labels


def test_an_empty_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        collect(tmp_path)


def test_realized_alpha_and_composition_are_reported_beside_the_configured_alpha(tmp_path):
    def composition(mono_en, mono_de, cross_rows):
        batches = 4
        return {"composition/batches": batches, "composition/mono_fraction": (mono_en + mono_de) / batches,
                "composition/mono/en": mono_en, "composition/mono/de": mono_de,
                "composition/cross/query/en": cross_rows[0], "composition/cross/query/de": cross_rows[1],
                "composition/cross/passage/en": cross_rows[1], "composition/cross/passage/de": cross_rows[0]}  # fmt: skip

    fake_run(tmp_path, "0", "me5", "hybrid", 1, 0.5, alpha=0.5, composition=composition(1, 1, (16, 16)))
    fake_run(tmp_path, "1", "me5", "hybrid", 2, 0.6, alpha=0.5, composition=composition(2, 1, (8, 8)))
    groups = collect(tmp_path)
    found, rows = summarise(groups)
    hybrid = next(r for r in rows if r["sampler"] == "hybrid")
    assert (hybrid["configured/alpha"], hybrid["composition/mono_fraction"]) == ("0.500", "0.500–0.750")
    assert "| α set | α realized |" in to_markdown(found, rows)
    table = composition_markdown(groups)
    assert "| me5 | hybrid | 2 | 8 (4–4 per run) | 0.625 | en 3 de 2 | 48 (24–24 per language) | 48 (24–24 per language) |" in table
    assert "zero-shot" not in table  # the backbone trained on nothing
