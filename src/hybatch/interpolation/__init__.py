"""Weight-space interpolation between the starting backbone and the fine-tuned encoder (WiSE-FT).

θ(λ) = (1-λ)·θ_start + λ·θ_fine-tuned for every tensor the two share (Wortsman et al. 2022,
"Robust fine-tuning of zero-shot models"). Fine-tuning on a small in-domain set can lose some of
what the backbone did well (monolingual retrieval out of domain, issue 14); a λ between 0 (the
backbone) and 1 (the fine-tuned model), chosen on the validation benchmark, keeps part of both.

LoRA adapters are merged into the weights first, so both sides are plain models with the same keys.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hybatch.encoder import DualEncoder
from hybatch.encoder.lora import is_lora

log = logging.getLogger(__name__)

RULES = ("best_mean", "constrained")
# Validation metrics a λ is chosen on and the curve records (keys of `evaluate_lareqa`).
CURVE_KEYS = ("mono/mAP", "cross/mAP", "multi/mAP", "multi/lang_bias")
MEAN_KEYS = ("mono/mAP", "cross/mAP", "multi/mAP")

Curve = Mapping[float, Mapping[str, float]]


class InterpolationError(ValueError):
    """The two models cannot be interpolated, or the interpolation was configured wrongly."""


# --- the math -------------------------------------------------------------------------------------
def merge_lora(encoder: DualEncoder) -> DualEncoder:
    """Merge LoRA adapters into the towers' weights, in place: afterwards the towers are plain models
    (the adapters are done training; test and export see the same weights)."""
    if is_lora(encoder.backbone):
        encoder.backbone = encoder.backbone.merge_and_unload()
    if encoder.passage_backbone is not None and is_lora(encoder.passage_backbone):
        encoder.passage_backbone = encoder.passage_backbone.merge_and_unload()
    return encoder


def cpu_state(module: nn.Module) -> dict[str, Tensor]:
    """A CPU copy of every tensor of `module`'s state (parameters and buffers)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def check_compatible(start: Mapping[str, Tensor], fine_tuned: Mapping[str, Tensor]) -> None:
    """Refuse, naming the key, two states that do not hold the same tensors."""
    only_start = sorted(set(start) - set(fine_tuned))
    only_fine = sorted(set(fine_tuned) - set(start))
    if only_start or only_fine:
        key, side = (only_start[0], "start") if only_start else (only_fine[0], "fine-tuned")
        raise InterpolationError(
            f"key {key!r} is only in the {side} model ({len(only_start)} keys only in the start model, "
            f"{len(only_fine)} only in the fine-tuned one): the two are not the same architecture"
        )
    for key, s in start.items():
        f = fine_tuned[key]
        if s.shape != f.shape:
            raise InterpolationError(f"key {key!r} has shape {tuple(s.shape)} in the start model and {tuple(f.shape)} in the fine-tuned one")
        if not (s.is_floating_point() and f.is_floating_point()) and not torch.equal(s, f):
            # Integer buffers (position ids, ...) cannot be averaged; they must agree.
            raise InterpolationError(f"key {key!r} is a non-float tensor ({s.dtype}) that differs between the two models")


def interpolated_tensor(start: Tensor, fine_tuned: Tensor, lam: float) -> Tensor:
    """(1-λ)·start + λ·fine_tuned in float32 (or wider), cast to the fine-tuned tensor's dtype.

    `torch.lerp` computes start + λ(fine-start) for λ < 0.5 and fine - (fine-start)(1-λ) above, so
    λ=0 and λ=1 give the two inputs bit for bit.
    """
    if not fine_tuned.is_floating_point():
        return fine_tuned
    dtype = torch.promote_types(torch.promote_types(start.dtype, fine_tuned.dtype), torch.float32)
    return torch.lerp(start.to(dtype), fine_tuned.to(dtype), lam).to(fine_tuned.dtype)


def interpolate_states(start: Mapping[str, Tensor], fine_tuned: Mapping[str, Tensor], lam: float) -> dict[str, Tensor]:
    """θ(λ) for every key of two compatible states."""
    check_compatible(start, fine_tuned)
    return {k: interpolated_tensor(start[k], f, lam) for k, f in fine_tuned.items()}


@torch.no_grad()
def load_interpolated(module: nn.Module, start: Mapping[str, Tensor], fine_tuned: Mapping[str, Tensor], lam: float) -> None:
    """Write θ(λ) into `module`'s tensors in place, one tensor at a time (no second copy of the model).

    Every tensor is computed from the two CPU states, so each λ starts from the fine-tuned weights.
    """
    target = module.state_dict()
    check_compatible(start, target)
    check_compatible(start, fine_tuned)
    for key, tensor in target.items():
        tensor.copy_(interpolated_tensor(start[key], fine_tuned[key], lam))


# --- the λ grid and the selection rules ----------------------------------------------------------
def evaluate_grid(
    module: nn.Module,
    start: Mapping[str, Tensor],
    fine_tuned: Mapping[str, Tensor],
    lambdas: Sequence[float],
    evaluate: Callable[[], Mapping[str, float]],
) -> dict[float, dict[str, float]]:
    """`evaluate()` (one pass over the validation benchmark) with θ(λ) in `module`, for each λ.

    `module` holds the last λ's weights afterwards; the caller loads the chosen one.
    """
    curve: dict[float, dict[str, float]] = {}
    for lam in tqdm(lambdas, desc="interpolation: λ grid", unit="λ"):
        load_interpolated(module, start, fine_tuned, lam)
        curve[float(lam)] = dict(evaluate())
        log.info("λ=%g: %s", lam, ", ".join(f"{k} {curve[float(lam)][k]:.4f}" for k in CURVE_KEYS if k in curve[float(lam)]))
    return curve


def _metric(curve: Curve, lam: float, key: str) -> float:
    values = curve[lam]
    if key not in values:
        raise InterpolationError(
            f"the validation metrics at λ={lam:g} have no {key!r} (they have {sorted(values)[:8]}...): "
            "a benchmark with one language has no cross-lingual setting; use a rule without it"
        )
    return float(values[key])


def _best(lambdas: Sequence[float], score: Callable[[float], float]) -> float:
    """The λ with the highest score; among equal scores the smallest λ (closest to the backbone)."""
    best = None
    for lam in sorted(lambdas):
        value = score(lam)
        if math.isnan(value):
            continue
        if best is None or value > best[1]:
            best = (lam, value)
    if best is None:
        raise InterpolationError(f"every λ of {sorted(lambdas)} scored NaN on validation")
    return best[0]


def choose_lambda(curve: Curve, rule: str, margin: float = 0.0) -> float:
    """The λ a rule picks from a validation curve (λ -> `evaluate_lareqa` metrics).

    best_mean: the best mean of mono, cross and multi mAP. constrained: the best multi mAP among the λ
    whose mono mAP is at least the backbone's (λ=0) minus `margin`. Ties go to the smaller λ.
    """
    if not curve:
        raise InterpolationError("no λ was evaluated")
    if rule == "best_mean":
        return _best(list(curve), lambda lam: sum(_metric(curve, lam, k) for k in MEAN_KEYS) / len(MEAN_KEYS))
    if rule == "constrained":
        if 0.0 not in curve:
            raise InterpolationError(f"rule=constrained compares with the backbone's mono mAP: λ=0 must be in the grid {sorted(curve)}")
        floor = _metric(curve, 0.0, "mono/mAP") - margin
        allowed = [lam for lam in curve if _metric(curve, lam, "mono/mAP") >= floor]
        return _best(allowed, lambda lam: _metric(curve, lam, "multi/mAP"))
    raise InterpolationError(f"interpolation.rule={rule!r}: expected one of {RULES}")


def lambda_label(lam: float) -> str:
    """λ as it appears in metric keys and folder names: 0, 0.25, 0.5, 1."""
    return f"{lam:g}"


def curve_metrics(curve: Curve, chosen: float) -> dict[str, float]:
    """metrics.json entries: `interpolation/lambda` and `interpolation/val/<λ>/<setting>/<metric>`."""
    out = {"interpolation/lambda": float(chosen)}
    for lam, values in curve.items():
        out.update({f"interpolation/val/{lambda_label(lam)}/{k}": float(values[k]) for k in CURVE_KEYS if k in values})
    return out


def write_curve(curve: Curve, chosen: float, out_dir: Path) -> tuple[Path, Path]:
    """`curve.csv` and `curve.png` (mAP per setting and language bias against λ) in `out_dir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    lambdas = sorted(curve)
    csv_path = out_dir / "curve.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["lambda", *CURVE_KEYS, "chosen"])
        for lam in lambdas:
            writer.writerow([lam, *(curve[lam].get(k, math.nan) for k in CURVE_KEYS), int(lam == chosen)])
    fig, (ax_map, ax_bias) = plt.subplots(1, 2, figsize=(10, 4))
    for setting in ("mono", "cross", "multi"):
        key = f"{setting}/mAP"
        if all(key in curve[lam] for lam in lambdas):
            ax_map.plot(lambdas, [curve[lam][key] for lam in lambdas], marker="o", label=setting)
    if all("multi/lang_bias" in curve[lam] for lam in lambdas):
        ax_bias.plot(lambdas, [curve[lam]["multi/lang_bias"] for lam in lambdas], marker="o", color="tab:red")
    for ax, ylabel in ((ax_map, "validation mAP"), (ax_bias, "language bias (multi; lower is better)")):
        ax.axvline(chosen, color="grey", linestyle="--", label=f"chosen λ={lambda_label(chosen)}")
        ax.set_xlabel("λ (0: backbone, 1: fine-tuned)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_map.legend(fontsize=8)
    fig.suptitle("Weight interpolation (WiSE-FT) on the validation benchmark")
    fig.tight_layout()
    png_path = out_dir / "curve.png"
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return csv_path, png_path


# --- after training ---------------------------------------------------------------------------------
class WeightInterpolation:
    """The `interpolation=wise_ft` config: the λ grid and the rule that picks one λ on validation."""

    # The defaults are those of conf/interpolation/wise_ft.yaml (tests/test_interpolation.py checks it).
    def __init__(
        self, lambdas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), rule: str = "constrained", margin: float = 0.015
    ) -> None:
        lambdas = [float(lam) for lam in lambdas]
        if not lambdas or any(not 0.0 <= lam <= 1.0 for lam in lambdas) or len(set(lambdas)) != len(lambdas):
            raise InterpolationError(f"interpolation.lambdas={lambdas}: expected distinct values in [0, 1]")
        if rule not in RULES:
            raise InterpolationError(f"interpolation.rule={rule!r}: expected one of {RULES}")
        if rule == "constrained" and 0.0 not in lambdas:
            raise InterpolationError(f"interpolation.rule=constrained needs λ=0 (the backbone) in interpolation.lambdas={lambdas}")
        if margin < 0:
            raise InterpolationError(f"interpolation.margin={margin}: expected >= 0")
        self.lambdas = sorted(lambdas)
        self.rule = rule
        self.margin = margin

    def choose(self, curve: Curve) -> float:
        return choose_lambda(curve, self.rule, self.margin)


def _uses_fsdp(cfg: Any) -> bool:
    from omegaconf import DictConfig

    strategy = cfg.get("trainer", {}).get("strategy")
    if isinstance(strategy, str):
        return strategy.lower().startswith("fsdp")
    return isinstance(strategy, (dict, DictConfig)) and "FSDP" in str(strategy.get("_target_", ""))


def interpolation_config(cfg: Any, datamodule: Any) -> WeightInterpolation | None:
    """The run's interpolation settings, built and checked once, before training (with the data, the
    sampler and the model config), so that a value it cannot honour stops the run before it trains;
    None when interpolation is off or the data has no LAReQA validation benchmark to choose λ on (e.g.
    parallel JSONL data): then the fine-tuned weights stay."""
    from hydra.utils import instantiate

    if not cfg.get("interpolation"):
        return None
    config: WeightInterpolation = instantiate(cfg.interpolation)
    if _uses_fsdp(cfg):
        raise InterpolationError(
            "interpolation=wise_ft writes θ(λ) into the encoder's tensors, which trainer=fsdp keeps sharded: "
            "use interpolation=none and interpolate the exported model/ with python -m hybatch.interpolation"
        )
    if cfg.model.get("projection_dim"):
        raise InterpolationError(
            f"model.projection_dim={cfg.model.projection_dim} adds a randomly initialised projection that a fresh "
            "instantiate of the backbone does not reproduce: there is no start value to interpolate from"
        )
    if datamodule.val_benchmark is None:
        log.warning(
            "interpolation chooses λ on a LAReQA validation benchmark and this data has none (data=xquad_r_split "
            "has one): the run keeps the fine-tuned weights; interpolation=none silences this"
        )
        return None
    return config


def interpolate_after_fit(
    config: WeightInterpolation | None, cfg: Any, encoder: DualEncoder, datamodule: Any, trainer: Any, output_dir: Path,
    loggers: Sequence[Any],
) -> dict[str, float]:
    """With the checked `config` of `interpolation_config` (None: nothing to do): score the λ grid on the
    validation benchmark and leave θ(λ*) in `encoder` (what is then tested and exported); returns the
    metrics.json entries.

    θ_start is a fresh instantiate of `cfg.model` (LoRA merged), kept on CPU with a CPU copy of the
    fine-tuned weights; the encoder is evaluated where the trainer ran (same as `val/...` metrics).
    """
    from hydra.utils import instantiate

    from hybatch.evaluation.lareqa_scoring import evaluate_lareqa
    from hybatch.loggers import log_results

    if config is None:
        return {}
    bench = datamodule.val_benchmark
    began, began_cpu = time.perf_counter(), time.process_time()
    with torch.random.fork_rng(devices=[]):  # loading the backbone must not move the run's RNG
        start_encoder = merge_lora(instantiate(cfg.model))
    start = cpu_state(start_encoder)
    del start_encoder
    merge_lora(encoder)
    fine_tuned = cpu_state(encoder)
    check_compatible(start, fine_tuned)

    home = next(encoder.parameters()).device
    encoder.to(trainer.strategy.root_device)
    curve = evaluate_grid(
        encoder, start, fine_tuned, config.lambdas,
        lambda: evaluate_lareqa(bench, encoder, batch_size=cfg.module.eval_batch_size, progress=False),
    )
    # Every rank scored the same weights; rank 0's choice makes sure they test the same model.
    chosen = float(trainer.strategy.broadcast(config.choose(curve), src=0))
    load_interpolated(encoder, start, fine_tuned, chosen)
    encoder.to(home)
    log.info("interpolation: λ=%g chosen by rule %s on %s", chosen, config.rule, bench.name)

    metrics = curve_metrics(curve, chosen)
    if trainer.is_global_zero:
        csv_path, png_path = write_curve(curve, chosen, output_dir / "interpolation")
        columns = ["lambda", *CURVE_KEYS]
        rows = [[lam, *(curve[lam].get(k, math.nan) for k in CURVE_KEYS)] for lam in sorted(curve)]
        log_results(loggers, {"interpolation/lambda": chosen}, {"interpolation/curve": (columns, rows)}, {"interpolation/curve": png_path})
        log.info("interpolation curve: %s, %s", csv_path, png_path)
    log.info(
        "interpolation took %.1f s wall, %.1f s CPU (%d λ on the validation benchmark)",
        time.perf_counter() - began, time.process_time() - began_cpu, len(curve),
    )
    return metrics
