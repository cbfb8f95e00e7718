"""GPU check: hybatch's training step on an XLM-R-base-shaped model, against sentence-transformers, plus search.

Runs with what a bare GPU machine has (torch, transformers, sentence-transformers, numpy; no Hydra,
no OmegaConf, no hub access): the weights are randomly initialised from an XLM-R base configuration
built in code, the inputs are random token ids with realistic query / passage lengths (no tokenizer),
and only hybatch modules that need neither Hydra nor Lightning are imported (`hybatch.encoder`,
`hybatch.loss`). Writes ONE JSON file; every field is described in docs/performance.md.

    bash benchmarks/gpu_check.sh [OUT.json]                 # on the GPU machine, < 8 minutes
    python benchmarks/gpu_check.py --smoke --out x.json     # tiny sizes on CPU, seconds

Measured, all in bf16 autocast with fp32 weights and fused AdamW (the same optimiser and parameter
groups on both sides):
1. hybatch at batch 128 (`DualEncoder` + `ContrastiveLoss`): pairs/s, peak memory, MFU;
2. sentence-transformers at batch 128 (the same weights, MultipleNegativesRankingLoss at scale 20 = 1 /
   temperature 0.05), in the same training loop on the same batches: pairs/s, peak memory, the ratio;
3. hybatch's cached loss (`cached_contrastive_backward`) at batch 4096: pairs/s, peak memory, MFU;
4. exact inner-product top-k search over 1M x 768 vectors: FAISS-GPU when importable, and torch
   (matmul + topk, fp16) always.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from transformers import XLMRobertaConfig, XLMRobertaModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # hybatch without installing it

from hybatch.encoder import DualEncoder  # noqa: E402
from hybatch.loss import ContrastiveLoss, cached_contrastive_backward  # noqa: E402

TEMPERATURE = 0.05
LR = 1e-5
WEIGHT_DECAY = 0.01
# Dense bf16 tensor-core peak (FLOP/s) by device name, from the vendors' data sheets.
PEAK_BF16 = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 80GB HBM3": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 756e12,  # an H100 of unknown form factor: the lower (PCIe) figure
    "A100": 312e12,
    "L40S": 362e12,
}


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def model_config(smoke: bool) -> XLMRobertaConfig:
    """xlm-roberta-base's shape (its published config: 250,002 tokens, 514 positions, one token type);
    the smoke mode's is tiny."""
    if smoke:
        return XLMRobertaConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=130, type_vocab_size=1)
    return XLMRobertaConfig(vocab_size=250002, max_position_embeddings=514, type_vocab_size=1)


def random_batches(
    n_batches: int, batch_size: int, cfg: XLMRobertaConfig, max_lengths: tuple[int, int], seed: int, device: torch.device
) -> list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """(query, passage) token batches, each padded to its longest text like hybatch's collator: lengths
    log-normal around 16 (queries) and 48 (passages) tokens, capped at the max lengths, the XLM-R
    <s> ... </s> frame and pad id 1."""
    gen = torch.Generator().manual_seed(seed)

    def side(median: float, cap: int) -> dict[str, torch.Tensor]:
        lengths = torch.exp(math.log(median) + 0.45 * torch.randn(batch_size, generator=gen)).round().long().clamp(4, cap)
        width = int(lengths.max())
        ids = torch.randint(5, cfg.vocab_size, (batch_size, width), generator=gen)
        mask = torch.arange(width)[None, :] < lengths[:, None]
        ids[:, 0] = 0
        ids[torch.arange(batch_size), lengths - 1] = 2
        ids[~mask] = cfg.pad_token_id
        return {"input_ids": ids.to(device), "attention_mask": mask.long().to(device)}

    return [(side(16, max_lengths[0]), side(48, max_lengths[1])) for _ in range(n_batches)]


def adamw(model: torch.nn.Module, fused: bool) -> torch.optim.AdamW:
    """hybatch's optimiser (`DualEncoderModule.configure_optimizers`): AdamW, decay on matrices only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=LR, fused=fused)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def timed_training(
    step: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], None],
    batches: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]],
    warmup: int,
    steps: int,
    device: torch.device,
) -> dict[str, Any]:
    """Run `warmup` then `steps` steps cycling through `batches`; seconds of the timed ones and peak memory."""

    def cycle() -> Iterator[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
        while True:
            yield from batches

    it = cycle()
    for _ in range(warmup):
        step(*next(it))
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    real = padded = pairs = 0
    start = time.perf_counter()
    for _ in range(steps):
        q, p = next(it)
        step(q, p)
        pairs += q["input_ids"].shape[0]
        real += int(q["attention_mask"].sum() + p["attention_mask"].sum())
        padded += q["input_ids"].numel() + p["input_ids"].numel()
    sync(device)
    seconds = time.perf_counter() - start
    return {
        "steps": steps,
        "warmup_steps": warmup,
        "seconds": seconds,
        "pairs_per_s": pairs / seconds,
        "step_s": seconds / steps,
        "real_tokens_per_step": real / steps,
        "padded_tokens_per_step": padded / steps,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def trained_parameters(model: torch.nn.Module) -> int:
    """Parameters that received a gradient (what the optimiser actually trains)."""
    return sum(p.numel() for p in model.parameters() if p.grad is not None)


def add_mfu(result: dict[str, Any], non_embedding: int, peak: float | None) -> None:
    """Model FLOPs utilisation: 6 x non-embedding parameters x tokens per step / step time / peak."""
    for key, tokens in (("mfu", "real_tokens_per_step"), ("mfu_padded_tokens", "padded_tokens_per_step")):
        result[key] = 6 * non_embedding * result[tokens] / result["step_s"] / peak if peak else None


def hybatch_encoder(state: dict[str, torch.Tensor], cfg: XLMRobertaConfig, device: torch.device) -> DualEncoder:
    backbone = XLMRobertaModel(cfg, add_pooling_layer=False)
    backbone.load_state_dict(state)
    # The encoder only reads the tokenizer's pad id here: the inputs come tokenized.
    tokenizer = SimpleNamespace(pad_token_id=cfg.pad_token_id, padding_side="right")
    return DualEncoder(backbone, tokenizer, pooling="mean", normalize=True).to(device).train()


def run_hybatch(state, cfg, batches, args, device) -> dict[str, Any]:
    encoder = hybatch_encoder(state, cfg, device)
    loss_fn = ContrastiveLoss(TEMPERATURE, gather=False)
    opt = adamw(encoder, fused=True)

    def step(q: dict[str, torch.Tensor], p: dict[str, torch.Tensor]) -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device):
            out = loss_fn(encoder(q, "query"), encoder(p, "passage"))
        out.loss.backward()
        opt.step()

    result = timed_training(step, batches, args.warmup_steps, args.steps, device)
    result["trained_parameters"] = trained_parameters(encoder)
    return result


def run_cached(state, cfg, batches, args, device) -> dict[str, Any]:
    encoder = hybatch_encoder(state, cfg, device)
    loss_fn = ContrastiveLoss(TEMPERATURE, gather=False)
    opt = adamw(encoder, fused=True)

    def embed(features: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast(device):
            return encoder(features, "query")

    def step(q: dict[str, torch.Tensor], p: dict[str, torch.Tensor]) -> None:
        opt.zero_grad(set_to_none=True)
        cached_contrastive_backward(embed, q, p, chunk_size=args.chunk_size, loss_fn=loss_fn)
        opt.step()

    result = timed_training(step, batches, min(1, args.warmup_steps), args.cached_steps, device)
    result.update(chunk_size=args.chunk_size, trained_parameters=trained_parameters(encoder))
    return result


def st_folder(state: dict[str, torch.Tensor], cfg: XLMRobertaConfig, path: Path) -> None:
    """A Hugging Face folder of the same weights, with a word-level tokenizer built in code so that
    sentence-transformers can load it (the benchmark feeds token ids and never tokenizes)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backbone = XLMRobertaModel(cfg, add_pooling_layer=False)
    backbone.load_state_dict(state)
    backbone.save_pretrained(path)
    tok = Tokenizer(models.WordLevel({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(path)


def run_sentence_transformers(state, cfg, batches, args, device) -> dict[str, Any]:
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    with tempfile.TemporaryDirectory() as tmp:
        st_folder(state, cfg, Path(tmp))
        model = SentenceTransformer(tmp, device=str(device))
    model.train()
    loss = MultipleNegativesRankingLoss(model, scale=1 / TEMPERATURE)
    opt = adamw(model, fused=True)
    labels = torch.arange(batches[0][0]["input_ids"].shape[0], device=device)

    def step(q: dict[str, torch.Tensor], p: dict[str, torch.Tensor]) -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device):
            value = loss([dict(q), dict(p)], labels)
        value.backward()
        opt.step()

    result = timed_training(step, batches, args.warmup_steps, args.steps, device)
    backbone = getattr(model[0], "auto_model", None) or getattr(model[0], "model", None)
    result.update(
        version=sentence_transformers.__version__,
        trained_parameters=trained_parameters(model),
        attention=getattr(getattr(backbone, "config", None), "_attn_implementation", None),
    )
    return result


def search(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Exact inner-product top-k of `queries` over `vectors` unit vectors (seconds: median of 3 after a warm-up)."""
    gen = torch.Generator().manual_seed(0)
    corpus = torch.nn.functional.normalize(torch.randn(args.vectors, args.dim, generator=gen), dim=-1)
    queries = torch.nn.functional.normalize(torch.randn(args.queries, args.dim, generator=gen), dim=-1)
    out: dict[str, Any] = {"vectors": args.vectors, "dim": args.dim, "queries": args.queries, "k": args.k}

    def median_time(fn: Callable[[], Any]) -> float:
        fn()
        times = []
        for _ in range(3):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - start)
        return sorted(times)[1]

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    c, q = corpus.to(device, dtype), queries.to(device, dtype)

    def torch_search() -> torch.Tensor:
        best = []
        for chunk in q.split(1024):
            best.append(torch.topk(chunk @ c.T, args.k, dim=1).indices)
        return torch.cat(best)

    out["torch_matmul_topk"] = {"dtype": str(dtype).removeprefix("torch."), "seconds": median_time(torch_search)}
    out["torch_matmul_topk"]["queries_per_s"] = args.queries / out["torch_matmul_topk"]["seconds"]
    try:
        import faiss
    except ImportError:
        out["faiss"] = {"status": "faiss not installed", "note": "torch_matmul_topk is the search timed instead"}
        return out
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    xb, xq = corpus.numpy(), queries.numpy()
    if device.type == "cuda" and gpus > 0:
        res = faiss.StandardGpuResources()
        index = faiss.GpuIndexFlatIP(res, args.dim)
        kind = "faiss GpuIndexFlatIP (fp32)"
    elif device.type == "cuda":
        out["faiss"] = {"status": f"faiss {faiss.__version__} installed without GPU support", "note": "torch_matmul_topk is the search timed instead"}
        return out
    else:
        index = faiss.IndexFlatIP(args.dim)
        kind = "faiss IndexFlatIP on CPU (smoke run)"
    start = time.perf_counter()
    index.add(xb)
    add_s = time.perf_counter() - start
    seconds = median_time(lambda: index.search(xq, args.k))
    out["faiss"] = {"status": kind, "version": faiss.__version__, "add_seconds": add_s, "seconds": seconds,
                    "queries_per_s": args.queries / seconds}
    return out


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def peak_flops(device: torch.device, override_tflops: float | None) -> tuple[float | None, str]:
    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if device.type != "cuda":
        return None, "no GPU: MFU not computed"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16.items():
        if key in name:
            return value, f"dense bf16 data-sheet peak for {key} (matched '{name}')"
    return None, f"unknown device '{name}': pass --peak-tflops"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on whatever device: checks the script runs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--cached-batch-size", type=int, default=4096)
    parser.add_argument("--chunk-size", type=int, default=512, help="cached loss: texts per forward")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--cached-steps", type=int, default=3)
    parser.add_argument("--max-lengths", type=int, nargs=2, default=(64, 256), metavar=("QUERY", "PASSAGE"))
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, if not in the built-in table")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch_size, args.cached_batch_size, args.chunk_size = 8, 16, 8
        args.steps, args.warmup_steps, args.cached_steps = 1, 0, 1
        args.max_lengths, args.vectors, args.dim, args.queries, args.k = (32, 64), 2000, 32, 50, 10
        torch.set_num_threads(1)  # tiny tensors: threads only contend, on a shared CPU most of all
    device = torch.device(args.device)
    started = time.perf_counter()
    cfg = model_config(args.smoke)
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in XLMRobertaModel(cfg, add_pooling_layer=False).state_dict().items()}
    n_params = sum(v.numel() for k, v in state.items() if not k.endswith("position_ids"))
    n_embedding = sum(v.numel() for k, v in state.items() if k.startswith("embeddings.") and k.endswith("embeddings.weight"))
    peak, peak_source = peak_flops(device, args.peak_tflops)
    report: dict[str, Any] = {
        "smoke": args.smoke,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                     "transformers": __import__("transformers").__version__},
        "model": {"shape": "xlm-roberta-base config, random weights" if not args.smoke else "tiny XLM-R (smoke)",
                  "hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers, "vocab": cfg.vocab_size,
                  "parameters": n_params, "non_embedding_parameters": n_params - n_embedding},
        "precision": "bf16 autocast, fp32 weights, fused AdamW" if device.type == "cuda" else "fp32 (CPU), fused AdamW",
        "max_lengths": {"query": args.max_lengths[0], "passage": args.max_lengths[1]},
        "peak_bf16_flops": peak,
        "peak_source": peak_source,
    }
    # Several distinct batches (shapes vary like real ones); one in the smoke run, where each new shape costs seconds on CPU.
    def save(stage: str) -> None:
        """Written after every stage: a check stopped by its time limit still leaves what it measured."""
        report["completed"] = stage
        report["wall_s"] = time.perf_counter() - started
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")

    save("start")
    batches = random_batches(1 if args.smoke else 8, args.batch_size, cfg, tuple(args.max_lengths), 1, device)

    log(f"hybatch, batch {args.batch_size}, {args.steps} steps")
    report["hybatch_b128"] = {"batch_size": args.batch_size, **run_hybatch(state, cfg, batches, args, device)}
    add_mfu(report["hybatch_b128"], n_params - n_embedding, peak)
    free(device)
    log("sentence-transformers, same batches")
    try:
        report["sentence_transformers_b128"] = {"batch_size": args.batch_size, **run_sentence_transformers(state, cfg, batches, args, device)}
        add_mfu(report["sentence_transformers_b128"], n_params - n_embedding, peak)
        ours, theirs = report["hybatch_b128"], report["sentence_transformers_b128"]
        if ours["trained_parameters"] != theirs["trained_parameters"]:
            report["ratio_hybatch_over_sentence_transformers"] = None
            report["ratio_note"] = (f"not comparable: trained parameters differ ({ours['trained_parameters']} vs "
                                    f"{theirs['trained_parameters']})")
        else:
            report["ratio_hybatch_over_sentence_transformers"] = ours["pairs_per_s"] / theirs["pairs_per_s"]
    except Exception as e:  # noqa: BLE001 - the rest of the check is still worth its JSON
        report["sentence_transformers_b128"] = {"error": f"{type(e).__name__}: {e}"}
        report["ratio_hybatch_over_sentence_transformers"] = None
    free(device)
    del batches
    save("batch 128")

    log(f"hybatch cached loss, batch {args.cached_batch_size}, chunks of {args.chunk_size}")
    big = random_batches(1, args.cached_batch_size, cfg, tuple(args.max_lengths), 2, device)
    try:
        report["hybatch_cached_b4096"] = {"batch_size": args.cached_batch_size, **run_cached(state, cfg, big, args, device)}
        add_mfu(report["hybatch_cached_b4096"], n_params - n_embedding, peak)
    except torch.cuda.OutOfMemoryError as e:
        report["hybatch_cached_b4096"] = {"error": f"out of memory: {e}"}
    del big
    free(device)
    save("cached loss")

    log(f"search: {args.queries} queries over {args.vectors} x {args.dim}")
    report["search"] = search(args, device)
    save("all")
    log(f"wrote {args.out} in {report['wall_s']:.0f} s")
    return report


if __name__ == "__main__":
    main()
