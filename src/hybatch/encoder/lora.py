"""LoRA adapters (peft) on a backbone: big backbones fine-tuned with a small trainable state.

Optional: needs `peft` (``pip install 'hybatch[lora]'``). Only the adapters train, so optimizer
states and gradients shrink to a fraction of a percent of the model; the export merges them back
into the weights, so the exported folder is an ordinary model that loads without peft.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn
from transformers import PreTrainedModel

log = logging.getLogger(__name__)

LORA_KEYS = ("r", "lora_alpha", "dropout", "target_modules")
# Old key -> new: `alpha` read as the batch mix (`sampler.alpha`) beside it; accepted for one release.
DEPRECATED_KEYS = {"alpha": "lora_alpha"}


def apply_lora(
    model: PreTrainedModel,
    r: int = 16,
    lora_alpha: int = 32,
    dropout: float = 0.05,
    target_modules: str | Sequence[str] = "all-linear",
) -> nn.Module:
    """Wrap `model` with LoRA adapters of rank `r` on `target_modules` (peft's "all-linear": every
    linear layer of the backbone); everything else is frozen. Returns peft's feature-extraction model,
    which takes the backbone's inputs and returns its outputs."""
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError as err:
        raise ImportError("model.lora needs peft: pip install 'hybatch[lora]' (or pip install peft)") from err
    if r < 1:
        raise ValueError(f"model.lora.r={r}: expected a rank >= 1")
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(
        r=r, lora_alpha=lora_alpha, lora_dropout=dropout, target_modules=targets, task_type=TaskType.FEATURE_EXTRACTION
    )
    return get_peft_model(model, config)


def lora_kwargs(lora: Mapping[str, Any]) -> dict[str, Any]:
    """Check a `model.lora` mapping's keys (a typo would otherwise silently train with defaults); a
    deprecated key is renamed, with a warning."""
    out = dict(lora)
    for old, new in DEPRECATED_KEYS.items():
        if old in out:
            if new in out:
                raise ValueError(f"model.lora has both {old!r} (deprecated) and {new!r}: keep model.lora.{new}")
            log.warning("model.lora.%s is deprecated and will be removed in the next release: use model.lora.%s", old, new)
            out[new] = out.pop(old)
    unknown = sorted(set(out) - set(LORA_KEYS))
    if unknown:
        raise ValueError(f"model.lora has unknown keys {unknown}: expected some of {list(LORA_KEYS)}")
    return out


def is_lora(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def merged_copy(model: nn.Module) -> PreTrainedModel:
    """A plain backbone with the adapters merged into its weights (the model being trained keeps them)."""
    return copy.deepcopy(model).merge_and_unload()
