"""Time XQuAD-R evaluation beyond encoding (parse + build the benchmark, score all 11 + 110 + multi
settings) and, with --model, the encoding itself; prints their ratio (budget: at most 20%).

    python benchmarks/eval_speed.py [XQUAD_R_DIR] [--dim 384] [--model me5_small_bundled] [--threads N]

Without --model, random unit embeddings of --dim stand in for the encoder's output.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from hybatch.data.lareqa_benchmarks import load_lareqa_benchmark
from hybatch.evaluation.lareqa_scoring import score_lareqa

REPO = Path(__file__).resolve().parents[1]


def encode(model: str, bench, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Question and candidate embeddings from a `conf/model/<model>.yaml` encoder, and the seconds taken."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from hybatch.config import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[f"model={model}", "paths.output_dir=."])
    encoder = instantiate(cfg.model).eval()
    start = time.perf_counter()
    with torch.inference_mode():
        questions = encoder.encode([q.text for q in bench.questions], "query", batch_size=batch_size)
        candidates = encoder.encode(bench.candidate_texts, "passage", batch_size=batch_size)
    return questions, candidates, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", nargs="?", default=str(REPO.parent / "shared" / "data" / "xquad-r"))
    parser.add_argument("--dim", type=int, default=384, help="dimension of the random embeddings (no --model)")
    parser.add_argument("--model", help="a conf/model config name: also time its encoding")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3, help="scoring runs; the fastest is reported")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    bench = load_lareqa_benchmark("xquad_r", data_dir=args.data_dir)
    build_s = time.perf_counter() - start

    encode_s = None
    if args.model:
        questions, candidates, encode_s = encode(args.model, bench, args.batch_size)
    else:
        gen = torch.Generator().manual_seed(0)
        questions = F.normalize(torch.randn(len(bench.questions), args.dim, generator=gen), dim=1)
        candidates = F.normalize(torch.randn(len(bench.candidates), args.dim, generator=gen), dim=1)

    score_s = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        metrics = score_lareqa(bench, questions, candidates)
        score_s = min(score_s, time.perf_counter() - start)

    table = Table(title=f"XQuAD-R evaluation speed ({torch.get_num_threads()} torch threads)")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    table.add_row(f"parse + build ({len(bench.questions)} questions x {len(bench.candidates)} candidates)", f"{build_s:.2f}")
    table.add_row(f"score {len(metrics)} metrics (dim {questions.shape[1]}, best of {args.repeats})", f"{score_s:.2f}")
    table.add_row("beyond encoding", f"{build_s + score_s:.2f}")
    if encode_s is not None:
        table.add_row(f"encoding with {args.model}", f"{encode_s:.2f}")
        table.add_row("ratio beyond / encoding", f"{(build_s + score_s) / encode_s:.1%}")
    Console().print(table)
    print(f"mono/mAP {metrics['mono/mAP']:.4f}  cross/mAP {metrics['cross/mAP']:.4f}  multi/mAP {metrics['multi/mAP']:.4f}")


if __name__ == "__main__":
    main()
