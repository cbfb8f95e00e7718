"""Mining speed side by side: `mine_negatives.py` against sentence-transformers' `mine_hard_negatives`.

    python benchmarks/mine_speed.py [XQUAD_R_DIR] [--languages en de] [--max-articles 12] [--model me5_small_bundled]

The same passages (the distinct answer sentences of the first --max-articles XQuAD-R articles, per
language), the same model (one encoder; sentence-transformers loads the folder it saves, prompts
included), the same settings (top 3 of ranks [3, 50] at most 0.95 x the positive's score; ST:
range_min=2, range_max=50, relative_margin=0.05, sampling_strategy=top, exact search on both sides)
and the same batch size, in one process. Each side mines every language once per round, after one
warm-up encoding, the side going first alternating between rounds. Reported: each side's fastest round,
their ratio, and the per-round ratios (theirs / ours seconds, > 1: ours faster) with their geometric
mean and its 95% t-interval over rounds, so a ratio near 1 can be read against the round-to-round
spread. passages/s is pool passages over the side's wall time (encoding passages and questions,
search, filtering; ours also writes its output file). Peak memory is the resident set sampled every
5 ms while a side runs, minus the resident set before it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from scipy import stats

from hybatch.config import CONFIG_DIR
from hybatch.data.xquad_r_split import load_xquad_r_split

REPO = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRss:
    """The highest resident set seen while the block runs, sampled by a thread, in bytes above its start."""

    def __enter__(self) -> PeakRss:
        self.start = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    @property
    def increase_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def write_input(corpus, path: Path) -> None:
    lines = [json.dumps({"id": ex.id, "article": ex.article, "translations": {
        lang: {"query": t.query, "positive": t.positive} for lang, t in ex.translations.items()}}, ensure_ascii=False)
        for ex in corpus.examples]  # fmt: skip
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_ours(encoder, src: Path, work: Path, args: argparse.Namespace) -> tuple[float, dict]:
    from hybatch.mining.command import run_mining

    work.mkdir()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("mine", overrides=[
            f"input={src}", f"out={work / 'mined.jsonl'}", f"model={args.model}", "progress=false",
            f"num_negatives={args.num_negatives}", f"rank_range=[{args.rank_range[0]},{args.rank_range[1]}]",
            f"max_score_ratio={args.max_score_ratio}", f"batch_size={args.batch_size}",
        ])  # fmt: skip
    start = time.perf_counter()
    run_mining(cfg, encoder)
    seconds = time.perf_counter() - start
    return seconds, json.loads((work / "mined.mine.json").read_text())["totals"]


def run_st(model, corpus, languages: list[str], args: argparse.Namespace) -> tuple[float, int]:
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    start = time.perf_counter()
    kept = 0
    for lang in languages:
        rows = [(ex.translations[lang].query, ex.translations[lang].positive) for ex in corpus.examples if lang in ex.translations]
        dataset = Dataset.from_dict({"query": [q for q, _ in rows], "positive": [p for _, p in rows]})
        mined = mine_hard_negatives(
            dataset, model, range_min=args.rank_range[0] - 1, range_max=args.rank_range[1],
            relative_margin=1 - args.max_score_ratio, num_negatives=args.num_negatives, sampling_strategy="top",
            query_prompt_name="query", corpus_prompt_name="passage", batch_size=args.batch_size,
            output_format="n-tuple", verbose=False,
        )  # fmt: skip
        kept += sum(1 for row in mined for key, value in row.items() if key.startswith("negative") and value)
    return time.perf_counter() - start, kept


def ratio_interval(ratios: list[float]) -> dict[str, object]:
    """Geometric mean of the per-round ratios and its 95% t-interval (log scale): rounds are the replicates."""
    logs = np.log(ratios)
    mean = float(logs.mean())
    if len(ratios) < 2:
        return {"ratio_geomean": round(math.exp(mean), 3)}
    half = float(stats.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / math.sqrt(len(logs)))
    return {"ratio_geomean": round(math.exp(mean), 3), "ratio_ci95": [round(math.exp(mean - half), 3), round(math.exp(mean + half), 3)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", nargs="?", default=str(REPO.parent / "shared" / "data" / "xquad-r"))
    parser.add_argument("--languages", nargs="+", default=["en", "de"])
    parser.add_argument("--max-articles", type=int, default=12, help="the first articles of XQuAD-R, in file order")
    parser.add_argument("--model", default="me5_small_bundled", help="a conf/model config name")
    parser.add_argument("--num-negatives", type=int, default=3)
    parser.add_argument("--rank-range", type=int, nargs=2, default=[3, 50])
    parser.add_argument("--max-score-ratio", type=float, default=0.95)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1, help="each side mines this many times; the fastest counts")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from hydra.utils import instantiate
    from sentence_transformers import SentenceTransformer

    data = load_xquad_r_split(args.data_dir, languages=args.languages, max_articles=args.max_articles,
                              split={"train": 1.0, "val": 0.0, "test": 0.0})  # fmt: skip
    corpus = data.train
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        encoder = instantiate(compose("mine", overrides=[f"model={args.model}", "input=x", "out=x"]).model).eval()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        encoder.save_pretrained(tmp / "st-model")
        st_model = SentenceTransformer(str(tmp / "st-model"), device="cpu")
        src = tmp / "input.jsonl"
        write_input(corpus, src)
        with torch.inference_mode():  # warm-up: both sides then start with the kernels loaded
            encoder.encode(["warm-up passage"] * 8, "passage", progress=False)
        st_model.encode(["warm-up passage"] * 8, prompt_name="passage")
        sides = {  # each: one round's (seconds, what it kept)
            "st": lambda r: run_st(st_model, corpus, args.languages, args),
            "ours": lambda r: run_ours(encoder, src, tmp / f"ours-{r}", args),
        }
        rounds: dict[str, list[tuple[float, float, object]]] = {"st": [], "ours": []}
        for r in range(args.rounds):
            # Alternate which side goes first, so a drift of the machine within a round favours neither.
            for side in ("st", "ours") if r % 2 == 0 else ("ours", "st"):
                with PeakRss() as mem:
                    seconds, kept = sides[side](r)
                rounds[side].append((seconds, mem.increase_mb, kept))
    ours, theirs = rounds["ours"], rounds["st"]
    ratios = [t[0] / o[0] for o, t in zip(ours, theirs, strict=True)]
    our_s, our_mb, totals = min(ours, key=lambda x: x[0])
    st_s, st_mb, st_kept = min(theirs, key=lambda x: x[0])
    passages = totals["passages"]
    result = {
        "languages": args.languages, "max_articles": args.max_articles, "model": args.model, "questions": totals["queries"],
        "passages": passages, "rounds": args.rounds, "threads": torch.get_num_threads(),
        "ours": {"seconds": round(our_s, 2), "passages_per_s": round(passages / our_s, 1), "peak_rss_increase_mb": round(our_mb, 1),
                 "negatives": totals["kept"]},
        "sentence_transformers": {"seconds": round(st_s, 2), "passages_per_s": round(passages / st_s, 1),
                                  "peak_rss_increase_mb": round(st_mb, 1), "negatives": st_kept},
        "ratio_ours_over_st": round(st_s / our_s, 3),
        "round_seconds": [{"ours": round(o[0], 2), "sentence_transformers": round(t[0], 2)} for o, t in zip(ours, theirs, strict=True)],
        "round_ratios": [round(x, 3) for x in ratios],
        **ratio_interval(ratios),
        "process_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
