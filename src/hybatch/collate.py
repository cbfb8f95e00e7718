"""Turn a list of text pairs into tokenized query / passage / hard-negative tensors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], prefix: str, max_length: int) -> dict[str, Tensor]:
    """Prefix, pad to the longest text and truncate to `max_length` tokens."""
    return dict(
        tokenizer([prefix + t for t in texts], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    )


ROLE_KEY = "role"


def tag_role(features: dict[str, Tensor], role: str) -> dict[str, Tensor]:
    """Add a per-row role tensor (0 query, 1 passage): it survives splitting a batch into chunks."""
    rows = features["input_ids"].shape[0]
    return {**features, ROLE_KEY: torch.full((rows,), 0 if role == "query" else 1)}


def concat_features(a: dict[str, Tensor], b: dict[str, Tensor], pad_token_id: int) -> dict[str, Tensor]:
    """Stack two tokenized batches row-wise, right-padding the shorter one."""
    length = max(a["input_ids"].shape[1], b["input_ids"].shape[1])

    def pad(features: dict[str, Tensor], key: str) -> Tensor:
        x = features[key]
        value = pad_token_id if key == "input_ids" else 0
        return torch.nn.functional.pad(x, (0, length - x.shape[1]), value=value)

    return {key: torch.cat([pad(a, key), pad(b, key)]) for key in a if key in b}


class PairCollator:
    """Tokenizes what `PairDataset` returns; picklable, so it runs in DataLoader workers.

    Hard negatives of all examples are concatenated: every query sees every passage and every
    negative of the batch as a candidate, so their count per example may differ. (A plain class,
    not a dataclass: Hydra would turn a dataclass argument into a config.)
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        query_prefix: str,
        passage_prefix: str,
        query_max_length: int,
        passage_max_length: int,
    ) -> None:
        self.tokenizer = tokenizer
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length

    @classmethod
    def from_encoder(cls, encoder: Any) -> PairCollator:
        return cls(
            encoder.tokenizer,
            encoder.query_prefix,
            encoder.passage_prefix,
            encoder.query_max_length,
            encoder.passage_max_length,
        )

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {
            "query": tokenize(self.tokenizer, [r["query"] for r in rows], self.query_prefix, self.query_max_length),
            "passage": tokenize(self.tokenizer, [r["positive"] for r in rows], self.passage_prefix, self.passage_max_length),
            "ids": [r["id"] for r in rows],
            "query_lang": [r["query_lang"] for r in rows],
            "passage_lang": [r["passage_lang"] for r in rows],
        }
        negatives = [n for r in rows for n in r["negatives"]]
        if negatives:
            batch["negatives"] = tokenize(self.tokenizer, negatives, self.passage_prefix, self.passage_max_length)
        return batch
