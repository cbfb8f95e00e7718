"""FSDP auto-wrap policy for any Hugging Face backbone (`conf/trainer/fsdp.yaml`)."""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel


class TransformerBlockPolicy:
    """Shard each transformer block (and, for BERT-like models, the embeddings) as its own FSDP unit.

    The classes are the ones a backbone declares unsplittable (`_no_split_modules`: `XLMRobertaXLLayer`,
    `MistralDecoderLayer`, ...), so one trainer config serves every model config, LoRA-wrapped or not.
    FSDP visits modules top-down, asking with `recurse=True` before descending: a backbone's classes are
    recorded before its blocks are asked about. One unit per block means that only one block's full
    parameters are materialised at a time in forward and backward.
    """

    def __init__(self) -> None:
        self.block_classes: set[str] = set()

    def __call__(self, module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
        if recurse:
            if isinstance(module, PreTrainedModel):
                self.block_classes.update(module._no_split_modules or ())
            return True
        return type(module).__name__ in self.block_classes
