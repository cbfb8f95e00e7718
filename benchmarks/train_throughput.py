"""Training throughput (pairs/s) of hybatch against sentence-transformers' trainer, in one run.

Both train the same backbone (the bundled multilingual-e5-small, from the same weights) on the same
XQuAD-R pairs in the same batches (hybatch's hybrid sampler decides them; sentence-transformers gets
them in that order, with the same "query: " / "passage: " prefixes), with the same maximum length, an
InfoNCE loss over in-batch negatives at the same temperature (MultipleNegativesRankingLoss, scale 20 =
1 / 0.05), AdamW, fp32, dropout on, no gradient clipping, no evaluation or checkpoints. Each side is
timed from the end of its warm-up steps to the end of its last step: data loading, tokenisation,
forward, backward and optimiser step included.

    python benchmarks/train_throughput.py [XQUAD_R_DIR] [--batch-size 32] [--steps 20] [--rounds 2]

Each round runs both, hybatch first in odd rounds and second in even ones; on a machine shared with
other jobs, take several rounds and compare within a round. sentence-transformers' trainer needs
`datasets` and `accelerate`: `pip install -e ".[bench]"`.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from rich.console import Console
from rich.table import Table

from hybatch.collate import PairCollator
from hybatch.config import CONFIG_DIR
from hybatch.datamodule import PairDataset
from hybatch.models.bundled import bundled_model_dir

REPO = Path(__file__).resolve().parents[1]
TEMPERATURE = 0.05


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


def compose_run(args: argparse.Namespace, output_dir: str) -> Any:
    overrides = [
        "model=me5_small_bundled", f"model.query_max_length={args.max_length}",
        f"model.passage_max_length={args.max_length}", f"data.data_dir={args.data_dir}",
        f"data.languages=[{args.languages}]", f"data.source.languages=[{args.languages}]",
        f"data.batch_size={args.batch_size}", "data.num_workers=0", "sampler=hybrid", f"module.temperature={TEMPERATURE}",
        f"module.lr={args.lr}", "module.max_grad_norm=null", "trainer=cpu", f"paths.output_dir={output_dir}",
        f"paths.cache_dir={args.cache_dir}",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


def hybatch_run(cfg: Any, args: argparse.Namespace) -> float:
    """Seconds for `args.steps` steps of hybatch's own pipeline (data module, sampler, Lightning)."""
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data, sampler=instantiate(cfg.sampler), seed=cfg.seed)
    encoder = instantiate(cfg.model)
    datamodule.collator = PairCollator.from_encoder(encoder)
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
    return timer.end - timer.start


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


def sentence_transformers_run(cfg: Any, args: argparse.Namespace, pairs: dict[str, list[str]], output_dir: str) -> float:
    """Seconds for `args.steps` steps of SentenceTransformerTrainer on the same batches."""
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
    training_args = SentenceTransformerTrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.warmup_steps + args.steps,
        learning_rate=args.lr,
        weight_decay=cfg.module.weight_decay,
        warmup_ratio=cfg.module.warmup,
        max_grad_norm=0.0,
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
    trainer.train()
    return timer.end - timer.start


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
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--cache-dir", default=os.environ.get("HYBATCH_CACHE", str(Path.home() / ".cache" / "hybatch")))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_run(args, tmp)
        pairs = planned_pairs(cfg, args)
        n_pairs = args.steps * args.batch_size
        rounds = []
        for r in range(args.rounds):
            # Alternate which side goes first: a change in the machine's load then favours neither.
            if r % 2 == 0:
                ours = n_pairs / hybatch_run(cfg, args)
                theirs = n_pairs / sentence_transformers_run(cfg, args, pairs, tmp)
            else:
                theirs = n_pairs / sentence_transformers_run(cfg, args, pairs, tmp)
                ours = n_pairs / hybatch_run(cfg, args)
            rounds.append((ours, theirs))
            print(f"round {r + 1}: hybatch {ours:.2f} pairs/s, sentence-transformers {theirs:.2f} pairs/s")

    table = Table(
        title=f"Training throughput, pairs/s (batch {args.batch_size}, max length {args.max_length}, "
        f"{args.steps} timed steps, {torch.get_num_threads()} torch threads)"
    )
    for column in ("round", "hybatch", "sentence-transformers", "ratio"):
        table.add_column(column, justify="right")
    for r, (ours, theirs) in enumerate(rounds, 1):
        table.add_row(str(r), f"{ours:.2f}", f"{theirs:.2f}", f"{ours / theirs:.3f}")
    ratios = [ours / theirs for ours, theirs in rounds]
    table.add_row("median", "", "", f"{statistics.median(ratios):.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
