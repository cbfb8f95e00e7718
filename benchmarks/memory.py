"""Peak memory of one training step against batch size, with the plain and with the cached loss.

    python benchmarks/memory.py [XQUAD_R_DIR] [--batch-sizes 8 16 32 64 128] [--chunk-size 8] [--device cpu]

One step = embed the batch's queries and passages (the bundled multilingual-e5-small, XQuAD-R pairs
from hybatch's hybrid sampler), contrastive loss, backward, AdamW step. The plain loss keeps every
activation of the batch until backward, so its peak grows with the batch; the cached loss
(`module.grad_cache_chunk_size`) holds one chunk's activations at a time plus the batch's embeddings,
so its peak stays flat. Reported: the step's peak above the memory in use before it (weights,
gradients and AdamW states, allocated by an untimed warm-up step, are the same for every point).

Every point runs in a fresh process. CPU: peak resident memory (VmHWM, reset through
/proc/self/clear_refs) above the resident memory before the step, with glibc told to return every
block above 64 KiB to the system when it is freed (MALLOC_MMAP_THRESHOLD_), so that resident memory
follows the live tensors instead of the allocator's cache; CUDA: torch's peak allocation above the
allocation before the step. A point that needs more than --memory-limit-gb (CPU: the worker's
address space is capped, so that it fails alone instead of waking the kernel's OOM killer on a shared
machine) or than the GPU has is reported as out of memory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]


def status_mb(field: str) -> float:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM, ...) in MB."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) / 1024


class Meter:
    """Memory in use now, and the peak since `reset`, in MB."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        return torch.cuda.memory_allocated() / 2**20 if self.cuda else status_mb("VmRSS")

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS

    def peak(self) -> float:
        return torch.cuda.max_memory_allocated() / 2**20 if self.cuda else status_mb("VmHWM")


def batch_features(args: argparse.Namespace, encoder: Any, batch_size: int) -> list[dict[str, Any]]:
    """The first `batch_size` pairs the hybrid sampler plans, tokenized like training batches."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from hybatch.collate import PairCollator
    from hybatch.config import CONFIG_DIR
    from hybatch.datamodule import PairDataset

    overrides = [f"data.data_dir={args.data_dir}", f"data.batch_size={batch_size}", "sampler=hybrid", "paths.output_dir=."]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    datamodule = instantiate(cfg.data, sampler=instantiate(cfg.sampler), seed=cfg.seed)
    items = next(iter(datamodule.make_sampler("train")))
    dataset = PairDataset(datamodule.data.train)
    return PairCollator.from_encoder(encoder)([dataset[item] for item in items])


def measure(args: argparse.Namespace, batch_size: int, cached: bool) -> float:
    """The step's peak memory above the memory in use before it, in MB (run in a fresh process)."""
    from hybatch.backbones.builders import me5_small_bundled
    from hybatch.collate import tag_role
    from hybatch.lightning_module import DualEncoderModule
    from hybatch.loss import cached_contrastive_backward

    device = torch.device(args.device)
    encoder = me5_small_bundled(args.cache_dir, query_max_length=args.max_length, passage_max_length=args.max_length)
    module = DualEncoderModule(encoder.to(device).train(), grad_cache_chunk_size=args.chunk_size if cached else None)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-5)

    def step(batch: dict[str, Any]) -> None:
        query = {k: v.to(device) for k, v in batch["query"].items()}
        passage = {k: v.to(device) for k, v in batch["passage"].items()}
        if cached:
            cached_contrastive_backward(
                module._embed_role_tagged,
                tag_role(query, "query"),
                tag_role(passage, "passage"),
                args.chunk_size,
                module.loss_fn,
            )
        else:
            module.loss_fn(encoder(query, "query"), encoder(passage, "passage")).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    warmup, batch = batch_features(args, encoder, args.chunk_size), batch_features(args, encoder, batch_size)
    step(warmup)
    meter = Meter(device)
    before = meter.now()
    meter.reset()
    step(batch)
    return meter.peak() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", nargs="?", default=str(REPO.parent / "shared" / "data" / "xquad-r"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--chunk-size", type=int, default=8, help="the cached loss's chunk size")
    parser.add_argument("--max-length", type=int, default=128, help="tokens, queries and passages alike")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per measurement")
    parser.add_argument("--memory-limit-gb", type=float, default=12.0, help="CPU: address space of a measurement")
    parser.add_argument("--cache-dir", default=os.environ.get("HYBATCH_CACHE", str(Path.home() / ".cache" / "hybatch")))
    parser.add_argument("--point", nargs=2, metavar=("BATCH_SIZE", "CACHED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.point:  # a worker: one measurement, printed as JSON on the last line
        batch_size, cached = int(args.point[0]), args.point[1] == "1"
        if args.device == "cpu":
            limit = int(args.memory_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            print(json.dumps({"peak_mb": measure(args, batch_size, cached)}))
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as err:
            if not isinstance(err, (torch.OutOfMemoryError, MemoryError)) and "allocate" not in str(err):
                raise
            print(json.dumps({"peak_mb": None}))
        return

    common = [args.data_dir, "--chunk-size", str(args.chunk_size), "--max-length", str(args.max_length),
              "--device", args.device, "--threads", str(args.threads), "--cache-dir", args.cache_dir,
              "--memory-limit-gb", str(args.memory_limit_gb)]  # fmt: skip
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    results: dict[tuple[int, bool], str] = {}
    for batch_size in args.batch_sizes:
        for cached in (False, True):
            cmd = [sys.executable, __file__, *common, "--point", str(batch_size), str(int(cached))]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
            peak = json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]
            results[batch_size, cached] = "out of memory" if peak is None else f"{peak:.0f} MB"
            print(f"batch {batch_size:4d} {'cached' if cached else 'plain '}: {results[batch_size, cached]}")

    table = Table(title=f"Peak memory of a training step above the model's ({args.device}, max length "
                        f"{args.max_length}, cached loss in chunks of {args.chunk_size})")  # fmt: skip
    for column in ("batch size", "plain loss", "cached loss"):
        table.add_column(column, justify="right")
    for batch_size in args.batch_sizes:
        table.add_row(str(batch_size), results[batch_size, False], results[batch_size, True])
    Console().print(table)


if __name__ == "__main__":
    main()
