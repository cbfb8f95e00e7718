"""LAReQA evaluation: relevance on the real XQuAD-R files, settings, hand-checked values (ties included), and
the chunked per-language kernel against a naive per-pair loop with sklearn and trec_eval; then evaluate.py's runner."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from helpers import HashEncoder, trec_eval_ranks
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from lightning.pytorch.loggers import WandbLogger
from omegaconf import OmegaConf, open_dict
from sklearn.metrics import average_precision_score

from hybatch.config import CONFIG_DIR
from hybatch.data.lareqa_benchmarks import (
    Candidate,
    LareqaLanguage,
    Question,
    build_lareqa_benchmark,
    load_lareqa_benchmark,
)
from hybatch.downloads import DataSourceError
from hybatch.evaluation.lareqa_scoring import evaluate_lareqa, score_lareqa
from hybatch.evaluation.runner import build_benchmarks, run_evaluation
from hybatch.loggers import log_results

XQUAD_LANGS = ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh")


def _pair_keys(metrics: dict[str, float]) -> list[str]:
    return [k for k in metrics if k.startswith("pair/") and k.endswith("/mAP")]


def test_xquad_r_relevance_on_the_real_files(xquad_r_dir):
    bench = load_lareqa_benchmark("xquad_r", data_dir=xquad_r_dir)
    assert bench.languages == XQUAD_LANGS
    assert len(bench.questions) == 11 * 1190 and len(bench.candidates) == 13014
    assert bench.candidate_lang.tolist() == sorted(bench.candidate_lang.tolist())  # grouped by language
    offset = {c.lang: len(bench.candidates) - i for i, c in enumerate(reversed(bench.candidates), 1)}
    for q, rel in zip(bench.questions, bench.relevance, strict=True):
        assert sorted(bench.candidates[j].lang for j in rel) == sorted(XQUAD_LANGS)
        assert len({bench.candidates[j].paragraph for j in rel}) == 1  # the parallel paragraph in each language
        assert offset[q.lang] + q.answer in rel  # its own language's answer

    raw = json.loads((xquad_r_dir / "en.json").read_text(encoding="utf-8"))
    answers = {qa["id"]: qa["answers"][0]["text"] for a in raw["data"] for p in a["paragraphs"] for qa in p["qas"]}
    for q, rel in zip(bench.questions, bench.relevance, strict=True):
        if q.lang != "en":
            continue
        (sentence,) = [bench.candidates[j].text for j in rel if bench.candidates[j].lang == "en"]
        answer = answers[q.qid]
        # The answer starts in its sentence at the start of a word (its end may cut a word: "(2,70"), or
        # runs on past a sentence break (3 answers, e.g. "E.I. | du Pont"): the sentence's last whole
        # words are the answer's first.
        starts_here = re.search(rf"(?<!\w){re.escape(answer)}", sentence) is not None
        a, s = re.findall(r"\w+", answer), re.findall(r"\w+", sentence)
        assert starts_here or any(s[-k:] == a[:k] for k in range(1, len(a))), (answer, sentence)


def test_xquad_r_settings_count_and_article_subset(xquad_r_dir):
    full = load_lareqa_benchmark("xquad_r", data_dir=xquad_r_dir)
    articles = sorted({q.article for q in full.questions})[:3]
    bench = load_lareqa_benchmark("xquad_r", data_dir=xquad_r_dir, articles=set(articles))
    assert {q.article for q in bench.questions} == set(articles) == {c.article for c in bench.candidates}
    gen = torch.Generator().manual_seed(0)
    metrics = score_lareqa(
        bench, torch.randn(len(bench.questions), 32, generator=gen), torch.randn(len(bench.candidates), 32, generator=gen)
    )
    pairs = _pair_keys(metrics)
    assert len(pairs) == 121
    assert sum(k.split("/")[1].split("-")[0] == k.split("/")[1].split("-")[1] for k in pairs) == 11
    cross = [metrics[k] for k in pairs if k.split("/")[1].split("-")[0] != k.split("/")[1].split("-")[1]]
    assert metrics["cross/mAP"] == pytest.approx(sum(cross) / 110)
    for key in ("mono/R@1", "cross/R@1", "multi/R@10", "multi/lang_bias", "mono/nDCG@10", "multi/MRR@10"):
        assert key in metrics
    assert len([k for k in metrics if k.startswith("multi/") and k.endswith("/lang_bias")]) == 12
    with pytest.raises(ValueError, match="none of the 1 requested articles"):
        load_lareqa_benchmark("xquad_r", languages=["en"], data_dir=xquad_r_dir, articles={"No_such_article"})
    with pytest.raises(DataSourceError, match=r"lacks \['fr.json'\]"):  # a local folder may hold any languages: not this one
        load_lareqa_benchmark("xquad_r", languages=["en", "fr"], data_dir=xquad_r_dir)
    with pytest.raises(ValueError, match="xquad_r has no language"):  # the pinned download has XQuAD-R's 11
        load_lareqa_benchmark("xquad_r", languages=["en", "fr"])


def test_mlqa_like_relevance_and_skipped_pairs(mlqa_like_dir):
    bench = load_lareqa_benchmark("mlqa_r", languages=["en", "de", "ar"], data_dir=mlqa_like_dir)
    expected = {
        ("en", "q1"): [0, 5], ("en", "q2"): [2, 9], ("en", "q3"): [1, 7], ("en", "q4"): [3],
        ("de", "q1"): [0, 5], ("de", "q3"): [1, 7], ("ar", "q2"): [2, 9],
    }
    assert bench.candidate_lang.tolist() == [0] * 5 + [1] * 3 + [2] * 2  # en, de, ar
    assert {(q.lang, q.qid): sorted(r) for q, r in zip(bench.questions, bench.relevance, strict=True)} == expected

    metrics = evaluate_lareqa(bench, HashEncoder(), progress=False)
    pairs = {k.split("/")[1] for k in _pair_keys(metrics)}
    # de-ar and ar-de share no question: skipped; en-ar only averages q2.
    assert pairs == {"en-en", "de-de", "ar-ar", "en-de", "de-en", "en-ar", "ar-en"}
    cross = [metrics[f"pair/{p}/mAP"] for p in ("en-de", "de-en", "en-ar", "ar-en")]
    assert metrics["cross/mAP"] == pytest.approx(sum(cross) / 4)
    assert metrics["mono/mAP"] == pytest.approx(sum(metrics[f"pair/{x}-{x}/mAP"] for x in ("en", "de", "ar")) / 3)


def test_each_text_is_encoded_once(mlqa_like_dir):
    bench = load_lareqa_benchmark("mlqa_r", languages=["en", "de", "ar"], data_dir=mlqa_like_dir)
    encoder = HashEncoder()
    evaluate_lareqa(bench, encoder, progress=False)
    assert [role for role, _ in encoder.calls] == ["query", "passage"]
    assert sorted(encoder.calls[0][1]) == sorted({q.text for q in bench.questions})
    assert sorted(encoder.calls[1][1]) == sorted(set(bench.candidate_texts))


def _tiny_benchmark():
    def lang_data(lang: str) -> LareqaLanguage:
        cands = [Candidate(lang, "A", 0, s, f"{lang} sentence {s}", "ctx") for s in range(2)]
        return LareqaLanguage(lang, [Question("q", lang, f"{lang} question", "A", 0)], cands)

    return build_lareqa_benchmark("tiny", {"en": lang_data("en"), "de": lang_data("de")})


def test_language_bias_and_ranks_by_hand():
    bench = _tiny_benchmark()  # pool: en0 (relevant), en1, de0 (relevant), de1
    scores = torch.tensor([[0.9, 0.1, 0.3, 0.5],  # en question: en0 rank 1, de0 rank 3 -> bias 2
                           [0.2, 0.8, 0.6, 0.7]])  # de question: de0 rank 3, en0 rank 4 -> bias 1
    metrics = score_lareqa(bench, scores, torch.eye(4))
    assert metrics["multi/en/lang_bias"] == 2 and metrics["multi/de/lang_bias"] == 1
    assert metrics["multi/lang_bias"] == 1.5
    assert metrics["multi/en/mAP"] == pytest.approx((1 + 2 / 3) / 2)
    assert metrics["multi/de/mAP"] == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert metrics["pair/en-de/mAP"] == pytest.approx(0.5) and metrics["pair/de-de/R@1"] == 0.0
    assert metrics["pair/de-en/MRR@10"] == pytest.approx(0.5)
    assert metrics["multi/en/R@10"] == 1.0


def test_ties_by_hand():
    """The documented tie rule, worked by hand: average precision retrieves tied items together (as
    sklearn); ranks are pessimistic (a tied non-relevant item goes first, tied relevant items in the
    order of the question's relevance list, here en0 then de0)."""
    bench = _tiny_benchmark()  # pool: en0 (relevant), en1, de0 (relevant), de1
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.9],  # en question
                           [0.7, 0.2, 0.7, 0.1]])  # de question
    metrics = score_lareqa(bench, scores, torch.eye(4))
    # en question, multi pool: de1 (0.9) rank 1, then the tie at 0.5: en1 (not relevant) 2, en0 3, de0 4.
    #   AP: both relevant items come with the 4 items scoring >= 0.5: precision 2/4 each -> 0.5.
    #   Language bias: 4 - 3 = 1.
    # en question, en pool {en0, en1} tied: en0 rank 2 -> R@1 0, MRR 1/2; AP 1/2 (1 relevant of 2).
    # en question, de pool {de0 0.5, de1 0.9}: de0 rank 2 -> R@1 0; AP 1/2.
    # de question, multi pool: en0 and de0 tie at 0.7 above the rest: ranks 1 and 2 -> bias 1; AP 2/2 = 1.
    # de question, de pool: de0 0.7 over de1 0.1 -> rank 1; en pool: en0 0.7 over en1 0.2 -> rank 1.
    assert metrics["multi/en/lang_bias"] == 1 and metrics["multi/de/lang_bias"] == 1
    assert metrics["multi/en/mAP"] == pytest.approx(0.5) and metrics["multi/de/mAP"] == pytest.approx(1.0)
    assert metrics["pair/en-en/R@1"] == 0.0 and metrics["pair/en-en/MRR@10"] == pytest.approx(0.5)
    assert metrics["pair/en-en/mAP"] == pytest.approx(0.5)
    assert metrics["pair/en-de/R@1"] == 0.0 and metrics["pair/en-de/mAP"] == pytest.approx(0.5)
    assert metrics["pair/de-de/R@1"] == 1.0 and metrics["pair/de-en/R@1"] == 1.0
    assert metrics["pair/de-de/mAP"] == metrics["pair/de-en/mAP"] == 1.0


@pytest.mark.parametrize("ties", [False, True])
def test_chunked_kernel_equals_naive_per_pair_loop(ties):
    gen = torch.Generator().manual_seed(7)
    langs = ["en", "de", "ar", "zh"]
    data = {}
    for li, lang in enumerate(langs):
        n_cand = 6 + 3 * li
        cands = [Candidate(lang, "A", p, 0, f"{lang}-{p}", "") for p in range(n_cand)]
        qs = [Question(f"q{k}", lang, f"{lang} q{k}", "A", int(torch.randint(0, n_cand, (1,), generator=gen)))
              for k in range(12) if torch.rand(1, generator=gen) < 0.7]
        data[lang] = LareqaLanguage(lang, qs, cands)
    bench = build_lareqa_benchmark("rand", data)
    q_emb = torch.randn(len(bench.questions), 8, generator=gen)
    c_emb = torch.randn(len(bench.candidates), 8, generator=gen)
    if ties:
        q_emb, c_emb = q_emb.round(), c_emb.round()
    metrics = score_lareqa(bench, q_emb, c_emb, chunk_size=5)
    scores = q_emb @ c_emb.T

    pair_values: dict[tuple[str, str], list[tuple[float, float]]] = {}
    multi: dict[str, list[tuple[float, float]]] = {}
    for i, q in enumerate(bench.questions):
        rel = list(bench.relevance[i])
        for cl in langs:
            members = [j for j, c in enumerate(bench.candidates) if c.lang == cl]
            rel_c = [j for j in rel if j in members]
            if not rel_c:
                continue
            y = [int(j in rel_c) for j in members]
            ap = average_precision_score(y, scores[i, members].numpy())
            pair_values.setdefault((q.lang, cl), []).append((ap, float(min(trec_eval_ranks(scores[i], members, rel_c)) == 1)))
        everything = list(range(len(bench.candidates)))
        y = [int(j in rel) for j in everything]
        r = trec_eval_ranks(scores[i], everything, rel)
        multi.setdefault(q.lang, []).append((average_precision_score(y, scores[i].numpy()), max(r) - min(r)))

    for (ql, cl), rows in pair_values.items():
        assert metrics[f"pair/{ql}-{cl}/mAP"] == pytest.approx(sum(a for a, _ in rows) / len(rows), abs=1e-9)
        assert metrics[f"pair/{ql}-{cl}/R@1"] == pytest.approx(sum(r for _, r in rows) / len(rows), abs=1e-9)
    assert len(_pair_keys(metrics)) == len(pair_values)
    for ql, rows in multi.items():
        assert metrics[f"multi/{ql}/mAP"] == pytest.approx(sum(a for a, _ in rows) / len(rows), abs=1e-9)
        assert metrics[f"multi/{ql}/lang_bias"] == pytest.approx(sum(b for _, b in rows) / len(rows), abs=1e-9)
    mono = [v for (ql, cl), v in pair_values.items() if ql == cl]
    assert metrics["mono/mAP"] == pytest.approx(sum(sum(a for a, _ in rows) / len(rows) for rows in mono) / len(mono))
    assert not any(math.isnan(v) for v in metrics.values())


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="evaluate", overrides=overrides)


def test_runner_end_to_end(mlqa_like_dir, tmp_path):
    out = tmp_path / "run"
    cfg = _compose([
        "benchmark=mlqa_r", "benchmark.languages=[en,de,ar]", f"benchmark.data_dir={mlqa_like_dir}",
        f"paths.output_dir={out}", f"paths.cache_dir={tmp_path / 'cache'}", "logger=csv",
    ])
    with open_dict(cfg):
        cfg.model = OmegaConf.create({"_target_": "helpers.HashEncoder", "dim": 32})
    metrics = run_evaluation(cfg)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    assert {"mlqa_r/mono/mAP", "mlqa_r/cross/R@1", "mlqa_r/multi/R@10", "mlqa_r/multi/lang_bias", "mlqa_r/pair/en-ar/mAP"} <= set(saved)
    for name in ("pair_mAP.csv", "pair_mAP.png", "per_language.png"):
        assert (out / "mlqa_r" / name).stat().st_size > 0
    csv_rows = (out / "mlqa_r" / "pair_mAP.csv").read_text().splitlines()
    assert csv_rows[0] == "query\\candidate,en,de,ar" and csv_rows[1].count(",") == 3
    assert ",," in csv_rows[2] or csv_rows[2].endswith(",")  # de-ar was skipped: empty cell
    logged = next((out / "csv").rglob("metrics.csv")).read_text()
    assert "mlqa_r/mono/mAP" in logged


def test_benchmark_config_shapes_and_shortcut_errors(tmp_path):
    with pytest.raises(InstantiationException, match="source=local needs data_dir"):
        build_benchmarks(_compose(["benchmark=all", f"paths.cache_dir={tmp_path}", "paths.output_dir=."]).benchmark)
    miracl_dir = f"benchmark.benchmarks.miracl.data_dir={tmp_path}"
    cfg = _compose(["benchmark=all", miracl_dir, f"paths.cache_dir={tmp_path}", "paths.output_dir=."])
    tasks = build_benchmarks(cfg.benchmark)
    assert list(tasks) == ["xquad_r", "mlqa_r", "miracl"]
    assert tasks["mlqa_r"].languages == ["ar", "de", "en", "es", "hi", "vi", "zh"]
    cfg = _compose(["benchmark=all", "benchmark.languages=[en,de]", "benchmark.candidate_text=sentence_with_context",
                    miracl_dir, f"paths.cache_dir={tmp_path}", "paths.output_dir=."])
    tasks = build_benchmarks(cfg.benchmark)
    assert all(t.languages == ["en", "de"] for t in tasks.values())
    assert tasks["xquad_r"].candidate_text == tasks["mlqa_r"].candidate_text == "sentence_with_context"
    cfg = _compose(["benchmark=all", "benchmark.data_dir=/x", f"paths.cache_dir={tmp_path}", "paths.output_dir=."])
    with pytest.raises(ValueError, match="single benchmark"):
        build_benchmarks(cfg.benchmark)
    cfg = _compose(["benchmark=miracl", "benchmark.candidate_text=sentence", f"paths.cache_dir={tmp_path}", "paths.output_dir=."])
    with pytest.raises(ValueError, match="candidate_text"):
        build_benchmarks(cfg.benchmark)


def test_results_reach_wandb_as_scalars_table_and_images(tmp_path):
    calls = []

    class RecordingWandb(WandbLogger):
        def log_metrics(self, metrics, step=None):
            calls.append(("metrics", dict(metrics), step))

        def log_table(self, key, columns=None, data=None, dataframe=None, step=None):
            calls.append(("table", key, columns, data))

        def log_image(self, key, images, step=None, **kwargs):
            calls.append(("image", key, images))

    png = tmp_path / "pair_mAP.png"
    png.write_bytes(b"png")
    tables = {"xquad_r/pair_mAP": (["query_lang", "en"], [["en", 0.5]])}
    log_results([RecordingWandb(offline=True, save_dir=str(tmp_path))], {"xquad_r/mono/mAP": 0.5, "x/nan": math.nan}, tables, {"xquad_r/pair_mAP": png})
    assert calls == [
        ("metrics", {"xquad_r/mono/mAP": 0.5}, 0),
        ("table", "xquad_r/pair_mAP", ["query_lang", "en"], [["en", 0.5]]),
        ("image", "xquad_r/pair_mAP", [str(png)]),
    ]
