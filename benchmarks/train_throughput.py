"""Training throughput (pairs/s) of hybatch against sentence-transformers' trainer at EQUAL work, in one run.

Both train the same backbone (the bundled multilingual-e5-small, from the same weights) on the same
XQuAD-R pairs in the same batches (hybatch's hybrid sampler decides them; sentence-transformers gets
them in that order, with the same "query: " / "passage: " prefixes), with the same maximum length, an
InfoNCE loss over in-batch negatives at the same temperature (MultipleNegativesRankingLoss, scale 20 =
1 / 0.05), fused AdamW with the same learning rate, schedule and weight-decay groups (matrices decayed;
biases and LayerNorm weights not), fp32, dropout on, no gradient clipping, no evaluation or checkpoints.
Each side is timed from the end of its warm-up steps to the end of its last step: data loading,
tokenisation, forward, backward and optimiser step included.

The same parameters train on both sides, in two cases (`--trainable`): `full` (every parameter) and
`frozen-embeddings` (the word-embedding matrix frozen on both sides, hybatch's
`model.freeze_embeddings=true`, `get_input_embeddings().requires_grad_(False)` for
sentence-transformers). BERT's pooler, which neither side uses (hybatch drops it), is kept out of
sentence-transformers' optimiser. Before any ratio is printed the benchmark checks, and refuses to
report otherwise, that both optimisers hold the same number of parameters in the same decay groups,
both fused, and that hybatch's collator saw exactly the texts given to sentence-transformers, in order.

    python benchmarks/train_throughput.py [XQUAD_R_DIR] [--batch-size 32] [--steps 20] [--rounds 2]
        [--trainable both|full|frozen-embeddings] [--length-groups 4]

hybatch runs twice per round: as it trains by default (each batch embedded in one pass, padded to its
longest text, as sentence-transformers does) and with `module.length_groups=N` (`--length-groups`,
default 4: each batch embedded in N passes over texts of similar length, each padded to its own
longest; same pairs, loss and parameters, less compute spent on padding). Each round runs every side,
the first side rotating from round to round; on a machine shared with other jobs, take several rounds
and compare within a round. sentence-transformers' trainer needs
`datasets` and `accelerate`: `pip install -e ".[bench]"`.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from rich.console import Console
from rich.table import Table

from hybatch.backbones.bundled import bundled_model_dir
from hybatch.collate import PairCollator
from hybatch.config import CONFIG_DIR
from hybatch.datamodule import PairDataset

REPO = Path(__file__).resolve().parents[1]
TEMPERATURE = 0.05


CASES = {"full": False, "frozen-embeddings": True}  # case -> embedding matrix frozen
ST = "sentence-transformers"


class UnequalWork(RuntimeError):
    """The two sides would not do the same work: no ratio is reported."""


def optimiser_summary(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Parameters per weight-decay value, total, and whether the step is fused (accelerate's wrapper unwrapped)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)
    groups: dict[float, int] = {}
    for group in optimizer.param_groups:
        n = sum(p.numel() for p in group["params"] if p.requires_grad)
        if n:
            groups[float(group["weight_decay"])] = groups.get(float(group["weight_decay"]), 0) + n
    return {"trainable": sum(groups.values()), "groups": groups, "fused": bool(optimizer.defaults.get("fused")),
            "lr": optimizer.defaults["lr"]}


class RecordingCollator:
    """Hands rows to a collator (hybatch's or sentence-transformers', whose other attributes it passes
    through) and keeps their (query, positive) texts, to check the batches."""

    def __init__(self, collator: Any, query_key: str = "query") -> None:
        self.collator = collator
        self.query_key = query_key
        self.seen: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["collator"], name)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        self.seen.extend((r[self.query_key], r["positive"]) for r in rows)
        return self.collator(rows)


class StepTimer(pl.Callback):
    """Seconds from the end of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.end: float | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def compose_run(args: argparse.Namespace, output_dir: str, frozen: bool, length_groups: int) -> Any:
    overrides = [
        f"module.length_groups={length_groups}",
        f"model.freeze_embeddings={str(frozen).lower()}",
        "model=me5_small_bundled", f"model.query_max_length={args.max_length}",
        f"model.passage_max_length={args.max_length}", f"data.data_dir={args.data_dir}",
        f"data.languages=[{args.languages}]", f"data.source.languages=[{args.languages}]",
        f"data.batch_size={args.batch_size}", "data.num_workers=0", "sampler=hybrid", f"module.temperature={TEMPERATURE}",
        f"module.lr={args.lr}", "module.max_grad_norm=null", "trainer=cpu", f"paths.output_dir={output_dir}",
        f"paths.cache_dir={args.cache_dir}",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


def hybatch_run(cfg: Any, args: argparse.Namespace) -> tuple[float, dict[str, Any], list[tuple[str, str]]]:
    """Seconds for `args.steps` steps of hybatch's own pipeline (data module, sampler, Lightning), its
    optimiser's summary and the (query, passage) texts its collator received."""
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data, sampler=instantiate(cfg.sampler), seed=cfg.seed)
    encoder = instantiate(cfg.model)
    recorder = RecordingCollator(PairCollator.from_encoder(encoder))
    datamodule.collator = recorder
    module = instantiate(cfg.module, encoder=encoder)
    timer = StepTimer(args.warmup_steps)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=args.warmup_steps + args.steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=datamodule)
    return timer.end - timer.start, optimiser_summary(trainer.optimizers[0]), recorder.seen


def planned_pairs(cfg: Any, args: argparse.Namespace) -> dict[str, list[str]]:
    """The texts of hybatch's batches (epoch 0 of its sampler), prefixed as its encoder prefixes them."""
    datamodule = instantiate(cfg.data, sampler=instantiate(cfg.sampler), seed=cfg.seed)
    sampler = datamodule.make_sampler("train")
    dataset = PairDataset(datamodule.data.train)
    queries, passages = [], []
    for step, batch in enumerate(sampler):
        if step == args.warmup_steps + args.steps:
            break
        for item in batch:
            row = dataset[item]
            queries.append(cfg.model.query_prefix + row["query"])
            passages.append(cfg.model.passage_prefix + row["positive"])
    return {"anchor": queries, "positive": passages}


def padded_tokens(tokenizer: Any, pairs: dict[str, list[str]], args: argparse.Namespace, groups: int) -> tuple[int, int]:
    """(tokens of the timed batches' texts, tokens embedded once padded): each batch's queries and its
    passages padded to their longest, or in `groups` length groups each padded to its own longest."""
    real = padded = 0
    start = args.warmup_steps * args.batch_size
    for texts in pairs.values():
        lengths = [len(ids) for ids in tokenizer(texts[start:], truncation=True, max_length=args.max_length)["input_ids"]]
        for b in range(0, len(lengths), args.batch_size):
            batch = sorted(lengths[b : b + args.batch_size], reverse=True)
            real += sum(batch)
            # The split of `embed_length_grouped` (torch.tensor_split: sizes differ by at most one).
            padded += sum(len(part) * int(part[0]) for part in np.array_split(batch, min(groups, len(batch))))
    return real, padded


def sentence_transformers_run(
    cfg: Any, args: argparse.Namespace, pairs: dict[str, list[str]], output_dir: str, frozen: bool
) -> tuple[float, dict[str, Any], list[tuple[str, str]]]:
    """Seconds for `args.steps` steps of SentenceTransformerTrainer on the same batches, its optimiser's
    summary and the (anchor, positive) texts its collator received."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        start: float | None = None
        end: float | None = None

        def on_step_end(self, _args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == args.warmup_steps:
                self.start = time.perf_counter()
            self.end = time.perf_counter()

    def in_order(dataset: Any, batch_size: int, drop_last: bool, **_: Any) -> DefaultBatchSampler:
        return DefaultBatchSampler(range(len(dataset)), batch_size=batch_size, drop_last=drop_last)

    torch.manual_seed(cfg.seed)
    model = SentenceTransformer(str(bundled_model_dir(args.cache_dir)), device="cpu")
    model.max_seq_length = args.max_length
    backbone = model[0].auto_model
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler.requires_grad_(False)  # unused by mean pooling; hybatch drops it
    if frozen:
        backbone.get_input_embeddings().requires_grad_(False)  # as hybatch's model.freeze_embeddings
    training_args = SentenceTransformerTrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.warmup_steps + args.steps,
        learning_rate=args.lr,
        weight_decay=cfg.module.weight_decay,
        warmup_ratio=cfg.module.warmup,
        max_grad_norm=0.0,
        optim="adamw_torch_fused",
        batch_sampler=in_order,
        dataloader_num_workers=0,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=cfg.seed,
        disable_tqdm=True,
    )
    timer = Timer()
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset=Dataset.from_dict(pairs),
        loss=MultipleNegativesRankingLoss(model, scale=1 / TEMPERATURE),
        callbacks=[timer],
    )
    recorder = RecordingCollator(trainer.data_collator, "anchor")
    trainer.data_collator = recorder
    trainer.train()
    return timer.end - timer.start, optimiser_summary(trainer.optimizer), recorder.seen


def check_equal_work(
    ours: dict[str, Any], theirs: dict[str, Any], seen: list[tuple[str, str]], seen_st: list[tuple[str, str]],
    pairs: dict[str, list[str]], prefixes: tuple[str, str],
) -> None:
    """Raise `UnequalWork` unless both optimisers are alike and both collators received the planned
    texts in the planned order (hybatch's without its prefixes, which its encoder adds)."""
    for key in ("trainable", "groups", "fused", "lr"):
        if ours[key] != theirs[key]:
            raise UnequalWork(f"optimisers differ in {key}: hybatch {ours[key]}, sentence-transformers {theirs[key]}")
    if not ours["fused"]:
        raise UnequalWork("AdamW is not fused")
    given = list(zip(pairs["anchor"], pairs["positive"], strict=True))
    for side, texts in (("hybatch", [(prefixes[0] + q, prefixes[1] + p) for q, p in seen]), ("sentence-transformers", seen_st)):
        # Loaders read ahead: what a side received may go on past the last planned pair.
        if texts[: len(given)] != given:
            first = next((i for i, (a, b) in enumerate(zip(texts, given)) if a != b), min(len(texts), len(given)))
            raise UnequalWork(f"{side}'s batches differ from the planned ones from pair {first} on")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", nargs="?", default=str(REPO.parent / "shared" / "data" / "xquad-r"))
    parser.add_argument("--languages", default="ar,de,en,es,ru,zh", help="comma-separated training languages")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128, help="tokens, queries and passages alike")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--trainable", choices=["both", *CASES], default="both",
                        help="full model, embedding matrix frozen on both sides, or both cases")
    parser.add_argument("--length-groups", type=int, default=4,
                        help="also time hybatch with module.length_groups=N (1: only the one-pass side)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--cache-dir", default=os.environ.get("HYBATCH_CACHE", str(Path.home() / ".cache" / "hybatch")))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    cases = list(CASES) if args.trainable == "both" else [args.trainable]
    ours_sides = {"hybatch": 1} | ({f"hybatch, {args.length_groups} length groups": args.length_groups} if args.length_groups > 1 else {})
    sides = [*ours_sides, ST]
    results: dict[str, list[dict[str, float]]] = {}
    params: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            frozen = CASES[case]
            configs = {side: compose_run(args, tmp, frozen, groups) for side, groups in ours_sides.items()}
            cfg = configs["hybatch"]
            pairs = planned_pairs(cfg, args)
            prefixes = (cfg.model.query_prefix, cfg.model.passage_prefix)
            n_pairs = args.steps * args.batch_size
            results[case] = []
            for r in range(args.rounds):
                # Rotate which side goes first: a change in the machine's load then favours none.
                order = sides[r % len(sides):] + sides[: r % len(sides)]
                seconds, summaries, seen = {}, {}, {}
                for side in order:
                    if side == ST:
                        seconds[side], summaries[side], seen[side] = sentence_transformers_run(cfg, args, pairs, tmp, frozen)
                    else:
                        seconds[side], summaries[side], seen[side] = hybatch_run(configs[side], args)
                for side in ours_sides:
                    check_equal_work(summaries[side], summaries[ST], seen[side], seen[ST], pairs, prefixes)
                params[case] = (summaries["hybatch"], summaries[ST])
                results[case].append({side: n_pairs / seconds[side] for side in sides})
                print(f"{case}, round {r + 1}: " + ", ".join(f"{side} {n_pairs / seconds[side]:.2f} pairs/s" for side in sides))

    console = Console(width=160)  # wide enough for every column, on a terminal or in a log file
    work = Table(title="Equal work: what each side's optimiser trains (checked identical before any ratio)")
    for column in ("case", "side", "trainable parameters", "decayed", "not decayed", "fused AdamW", "lr"):
        work.add_column(column, justify="right")
    for case, (ours, theirs) in params.items():
        for side, summary in (("hybatch", ours), ("sentence-transformers", theirs)):
            work.add_row(case, side, f"{summary['trainable']:,}", f"{summary['groups'].get(cfg.module.weight_decay, 0):,}",
                         f"{summary['groups'].get(0.0, 0):,}", str(summary["fused"]), f"{summary['lr']:g}")
    console.print(work)
    table = Table(
        title=f"Training throughput, pairs/s (batch {args.batch_size}, max length {args.max_length}, fp32, "
        f"{args.steps} timed steps after {args.warmup_steps}, {torch.get_num_threads()} torch threads)"
    )
    for column in ("case", "round", *sides, *(f"ratio {side} / ST" for side in ours_sides)):
        table.add_column(column, justify="right")
    for case, rounds in results.items():
        for r, row in enumerate(rounds, 1):
            table.add_row(case, str(r), *(f"{row[side]:.2f}" for side in sides), *(f"{row[side] / row[ST]:.3f}" for side in ours_sides))
        medians = (f"{statistics.median(row[side] / row[ST] for row in rounds):.3f}" for side in ours_sides)
        table.add_row(case, "median", *("" for _ in sides), *medians)
    console.print(table)
    tokenizer = instantiate(cfg.model).tokenizer
    real, one_pass = padded_tokens(tokenizer, pairs, args, 1)
    line = f"timed batches of the last case: {real:,} text tokens, {one_pass:,} embedded in one pass per batch"
    if args.length_groups > 1:
        _, grouped = padded_tokens(tokenizer, pairs, args, args.length_groups)
        line += f", {grouped:,} in {args.length_groups} length groups ({grouped / one_pass:.3f} of one pass)"
    print(line)
    print(f"versions: torch {torch.__version__}, sentence-transformers {version('sentence-transformers')}, "
          f"transformers {version('transformers')}, datasets {version('datasets')}, accelerate {version('accelerate')}; "
          f"{time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
