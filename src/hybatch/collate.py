"""Turn a list of text pairs into tokenized query / passage / hard-negative tensors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
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


class TokenCache:
    """Token ids of each text, computed once: a text met again (in a later epoch, at every validation)
    is padded from its cached ids instead of tokenized again. Gives exactly the tensors of `tokenize`
    (ids truncated to `max_length`, padded to the batch's longest on the tokenizer's padding side, zero
    token types); tokenizes the texts it has not seen in one batched call. Keeps at most `max_texts`
    texts (int32 arrays, ~4 bytes a token); later ones are tokenized every time."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prefix: str, max_length: int, max_texts: int) -> None:
        self.tokenizer, self.prefix, self.max_length, self.max_texts = tokenizer, prefix, max_length, max_texts
        self.ids: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        seen = {t: self.ids[t] for t in texts if t in self.ids}
        new = [t for t in dict.fromkeys(texts) if t not in seen]
        if new:
            encoded = self.tokenizer([self.prefix + t for t in new], truncation=True, max_length=self.max_length)["input_ids"]
            for text, ids in zip(new, encoded, strict=True):
                seen[text] = ids = np.asarray(ids, dtype=np.int32)
                if len(self.ids) < self.max_texts:
                    self.ids[text] = ids
        rows = [seen[t] for t in texts]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), getattr(self.tokenizer, "pad_token_id", 0), dtype=torch.int64)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.int64)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for i, r in enumerate(rows):
            span = slice(width - len(r), width) if left else slice(0, len(r))
            input_ids[i, span] = torch.from_numpy(r)
            attention_mask[i, span] = 1
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in getattr(self.tokenizer, "model_input_names", ()):
            out["token_type_ids"] = torch.zeros_like(input_ids)
        return out


class PairCollator:
    """Tokenizes what `PairDataset` returns; picklable, so it runs in DataLoader workers.

    Hard negatives of all examples are concatenated: every query sees every passage and every
    negative of the batch as a candidate, so their count per example may differ. Texts are tokenized
    once and their ids cached (`TokenCache`, up to `token_cache_size` texts per role; 0: off): the
    batches are the same tensors as with `tokenize`. (A plain class, not a dataclass: Hydra would turn
    a dataclass argument into a config.)
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        query_prefix: str,
        passage_prefix: str,
        query_max_length: int,
        passage_max_length: int,
        token_cache_size: int = 1_000_000,
    ) -> None:
        self.tokenizer = tokenizer
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
        self.token_cache_size = token_cache_size
        self._queries = TokenCache(tokenizer, query_prefix, query_max_length, token_cache_size)
        self._passages = TokenCache(tokenizer, passage_prefix, passage_max_length, token_cache_size)

    def _tokenize(self, texts: Sequence[str], role: str) -> dict[str, Tensor]:
        if self.token_cache_size <= 0:
            prefix, length = (self.query_prefix, self.query_max_length) if role == "query" else (self.passage_prefix, self.passage_max_length)
            return tokenize(self.tokenizer, texts, prefix, length)
        return (self._queries if role == "query" else self._passages)(texts)

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
            "query": self._tokenize([r["query"] for r in rows], "query"),
            "passage": self._tokenize([r["positive"] for r in rows], "passage"),
            "ids": [r["id"] for r in rows],
            "query_lang": [r["query_lang"] for r in rows],
            "passage_lang": [r["passage_lang"] for r in rows],
        }
        keyed = all("passage_key" in r for r in rows)
        if keyed:
            # Same key, same passage: masked out of each other's candidates by the loss.
            batch["passage_key"] = torch.tensor([r["passage_key"] for r in rows], dtype=torch.int64)
        negatives = [n for r in rows for n in r["negatives"]]
        if negatives:
            batch["negatives"] = self._tokenize(negatives, "passage")
            if keyed:
                batch["negative_keys"] = torch.tensor(
                    [k for r in rows for k in r.get("negative_keys", [-1] * len(r["negatives"]))], dtype=torch.int64
                )
        return batch
