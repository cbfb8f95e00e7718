"""The exported model's card (`<run dir>/model/README.md`): Hub front matter, languages, sampler and alpha,
realized composition, the test metrics of metrics.json as printed numbers, prompts, command, data sources."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import make_run, run_metrics

from hybatch.model_card import RunDirError, build_model_card, main, write_model_card


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_card_of_a_run(tmp_path):
    run = make_run(tmp_path / "run")
    path = write_model_card(run, name="someone/hybrid-tiny")
    card = path.read_text()
    assert path == run / "model" / "README.md"
    meta = front_matter(card)
    assert meta["language"] == ["en", "de"] and meta["library_name"] == "sentence-transformers"
    assert meta["license"] == "other" and "base_model" not in meta  # a randomly initialised model
    assert "sentence-transformers" in meta["tags"] and meta["pipeline_tag"] == "sentence-similarity"
    exact = {m["name"].split(" ")[0]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    m = run_metrics()
    assert exact == {k: m[f"test/{k}"] for k in ("mono/mAP", "cross/mAP", "multi/mAP", "mono/R@1", "cross/R@1",
                                                 "multi/R@10", "multi/lang_bias")}  # fmt: skip
    # The table prints the test values (and the zero-shot row) of metrics.json.
    row = next(line for line in card.splitlines() if line.startswith("| fine-tuned |"))
    assert row == "| fine-tuned | 0.8123 | 0.7012 | 0.6111 | 0.7500 | 0.6000 | 0.9000 | 123.5 |"
    assert "| zero-shot backbone | 0.7623 | 0.6512 | 0.5611 |" in card
    assert "| en | 0.6000 |" in card and "| de | 0.6200 |" in card
    assert "alpha = 0.3" in card and "hybrid: a fraction alpha of the batches monolingual" in card
    assert "29 training batches, 0.345 of them monolingual" in card and "| en | 6 | 150 | 154 |" in card
    assert '`"query: "`' in card and 'model.encode_document(' in card and 'SentenceTransformer("someone/hybrid-tiny")' in card
    assert "python train.py model=tiny sampler=hybrid sampler.alpha=0.3 'data.languages=[en,de]' data.batch_size=8" in card
    assert "XQuAD-R (LAReQA" in card and "3 training articles" in card and "CC BY-SA 4.0" in card
    assert "| miracl/de/nDCG@10 | 0.5123 |" in card
    assert "val/multi/mAP" not in card.split("## Full training configuration")[0]  # validation keys are not results
    assert "## Full training configuration" in card and "alpha: 0.3" in card


def test_base_model_and_license_of_a_hub_backbone(tmp_path, capsys):
    run = make_run(tmp_path / "run", model="me5_small_bundled")
    main([str(run)])
    assert capsys.readouterr().out.strip() == str(run / "model" / "README.md")
    meta = front_matter((run / "model" / "README.md").read_text())
    assert meta["base_model"] == "intfloat/multilingual-e5-small" and meta["license"] == "mit"
    assert front_matter(build_model_card(run, license="apache-2.0"))["license"] == "apache-2.0"


def test_training_data_from_prepared_cards(tmp_path):
    data = tmp_path / "prepared"
    data.mkdir()
    (data / "nq.jsonl").write_text("")
    card = {"dataset": "nq", "languages": ["en", "de"], "translation": {"target": "hybatch.prepare.translate.NllbTranslator"},
            "source": {"dataset": "sentence-transformers/natural-questions", "revision": "f9e894e1081e206e577b", "license": "CC BY-SA 3.0"}}  # fmt: skip
    (data / "nq.card.json").write_text(json.dumps(card))
    run = make_run(tmp_path / "run", extra=("data=parallel_jsonl", f"data.source.train=[{data / 'nq.jsonl'}]"))
    text = build_model_card(run)
    assert "| nq | [sentence-transformers/natural-questions](https://huggingface.co/datasets/sentence-transformers/natural-questions)" in text
    assert "machine-translated into en, de (NllbTranslator) | CC BY-SA 3.0 |" in text


def test_missing_or_broken_run_files_are_named(tmp_path):
    with pytest.raises(RunDirError, match="config.yaml not found"):
        build_model_card(tmp_path)
    run = make_run(tmp_path / "run")
    (run / "metrics.json").write_text('{"test/multi/mAP": 0.5,\n  oops}')
    with pytest.raises(RunDirError, match=r"metrics.json:2: invalid JSON"):
        build_model_card(run)
    (run / "metrics.json").unlink()
    with pytest.raises(RunDirError, match="metrics.json not found"):
        build_model_card(run)
    with pytest.raises(RunDirError, match="the run exported no model"):
        write_model_card(run, model_dir=tmp_path / "nowhere")
