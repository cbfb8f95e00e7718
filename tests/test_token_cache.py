"""The collator's token cache (hybatch.collate.TokenCache): each text tokenized once, yet the batches
are exactly the tensors of tokenizing every batch afresh, so the loss is the same."""

from __future__ import annotations

import random

import pytest
import torch

from hybatch.collate import PairCollator
from hybatch.loss import ContrastiveLoss

TEXTS = [
    "How many points did the Panthers defense surrender?",
    "Wie viele Punkte gab die Verteidigung ab?",
    "كم عدد النقاط التي تخلى عنها الدفاع؟",
    "防守方放弃了多少分？",
    "ฝ่ายรับเสียไปกี่แต้ม",
    "¿Cuántos puntos cedió la defensa?",
    "Сколько очков пропустила защита?",
    " ".join(["a very long passage that the maximum length must cut"] * 20),
    "",
]


@pytest.fixture(scope="module")
def tokenizer(cache_dir):
    from hybatch.backbones.bundled import bundled_tokenizer

    return bundled_tokenizer(cache_dir)


def batches(seed: int, n: int = 12, size: int = 5) -> list[list[dict]]:
    """Batches of rows as PairDataset gives them; texts repeat within and across batches."""
    rng = random.Random(seed)
    rows = lambda: [  # noqa: E731
        {"id": str(i), "query": rng.choice(TEXTS), "positive": rng.choice(TEXTS), "negatives": rng.sample(TEXTS, 2),
         "query_lang": "en", "passage_lang": "de", "passage_key": i}
        for i in range(size)
    ]
    return [rows() for _ in range(n)]


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("cache_size", [1_000_000, 3])
def test_cached_batches_are_the_tensors_of_fresh_tokenization(tokenizer, padding_side, cache_size, monkeypatch) -> None:
    monkeypatch.setattr(tokenizer, "padding_side", padding_side)
    cached = PairCollator(tokenizer, "query: ", "passage: ", 12, 20, token_cache_size=cache_size)
    fresh = PairCollator(tokenizer, "query: ", "passage: ", 12, 20, token_cache_size=0)
    for rows in batches(0):
        a, b = cached(rows), fresh(rows)
        assert a.keys() == b.keys()
        for key in ("query", "passage", "negatives"):
            assert a[key].keys() == b[key].keys()
            for name in a[key]:
                assert torch.equal(a[key][name], b[key][name]), (key, name)
        assert torch.equal(a["passage_key"], b["passage_key"])
    assert len(cached._queries.ids) == min(cache_size, len({r["query"] for rows in batches(0) for r in rows}))


def test_the_loss_is_the_same_with_the_cache(cache_dir) -> None:
    from hybatch.backbones.builders import tiny_dual_encoder

    encoder = tiny_dual_encoder(cache_dir=cache_dir, init_seed=0).eval()
    cached = PairCollator.from_encoder(encoder)
    fresh = PairCollator.from_encoder(encoder)
    fresh.token_cache_size = 0
    loss = ContrastiveLoss(0.05, gather=False)
    with torch.no_grad():
        for rows in batches(1, n=3):
            a, b = cached(rows), fresh(rows)
            la = loss(encoder(a["query"], "query"), encoder(a["passage"], "passage"), encoder(a["negatives"], "passage"))
            lb = loss(encoder(b["query"], "query"), encoder(b["passage"], "passage"), encoder(b["negatives"], "passage"))
            assert torch.equal(la.loss, lb.loss)
