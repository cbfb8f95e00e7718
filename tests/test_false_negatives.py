"""False negatives: examples whose positives are the same passage are never each other's negatives.

The masked loss is checked against an independent computation that drops, for each query, the
columns of its duplicates (loss and gradients), in the plain, cached and cross-device (2 gloo
processes) losses; the passage keys against XQuAD-R's shared answer sentences.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import assert_grads_close, encoder, grads, make_inputs
from helpers import free_port as _free_port
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from hybatch.data.corpus import ParallelCorpus, ParallelExample, Translation
from hybatch.data.parallel_jsonl import read_parallel_jsonl
from hybatch.loss import ContrastiveLoss, cached_contrastive_backward, contrastive_loss, false_negative_mask

T = 0.05
# Examples 0, 2 and 5 have the same passage, as have 1 and 4; 3 is alone.
KEYS = torch.tensor([7, 3, 7, 9, 3, 7])


def reference_loss(q: Tensor, p: Tensor, n: Tensor | None, keys: Tensor, t: float = T) -> Tensor:
    """Per query, cross-entropy over the candidates that remain once its duplicates' columns are removed."""
    candidates = p if n is None else torch.cat([p, n])
    losses = []
    for i in range(q.shape[0]):
        keep = [j for j in range(candidates.shape[0]) if j >= p.shape[0] or j == i or keys[j] != keys[i]]
        scores = F.normalize(q[i], dim=-1) @ F.normalize(candidates[keep], dim=-1).T / t
        losses.append(torch.logsumexp(scores, 0) - scores[keep.index(i)])
    return torch.stack(losses).mean()


def test_mask_marks_other_examples_with_the_same_key_only() -> None:
    mask = false_negative_mask(torch.tensor([1, 2, 1]), 5)
    assert mask.tolist() == [
        [False, False, True, False, False],
        [False, False, False, False, False],
        [True, False, False, False, False],
    ]


@pytest.mark.parametrize("with_negatives", [False, True])
def test_masked_loss_and_gradients_equal_the_loss_without_the_duplicates_columns(with_negatives: bool) -> None:
    g = torch.Generator().manual_seed(0)
    b = len(KEYS)
    q, p, n = (torch.randn(rows, 8, generator=g, dtype=torch.float64) for rows in (b, b, 2 * b))
    n = n if with_negatives else None
    leaves = [x.clone().requires_grad_() for x in (q, p, *([n] if with_negatives else []))]
    out = contrastive_loss(leaves[0], leaves[1], leaves[2] if with_negatives else None, T, KEYS)
    out.loss.backward()
    ref_leaves = [x.clone().requires_grad_() for x in (q, p, *([n] if with_negatives else []))]
    want = reference_loss(ref_leaves[0], ref_leaves[1], ref_leaves[2] if with_negatives else None, KEYS)
    want.backward()
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-12)
    for got, ref in zip(leaves, ref_leaves, strict=True):
        torch.testing.assert_close(got.grad, ref.grad, rtol=1e-10, atol=1e-12)
    # 0, 2, 5 mask each other (6 entries), 1 and 4 each other (2 entries).
    assert int(out.masked) == 8
    # Without keys nothing is masked, and the loss differs.
    plain = contrastive_loss(q, p, n, T)
    assert int(plain.masked) == 0 and plain.loss.item() != pytest.approx(want.item(), rel=1e-6)


def test_masked_duplicate_equals_the_batch_without_it_for_the_other_queries() -> None:
    # Query 0's loss with its exact duplicate (example 1) masked is its loss in the batch without example 1.
    g = torch.Generator().manual_seed(1)
    q, p = torch.randn(4, 8, generator=g, dtype=torch.float64), torch.randn(4, 8, generator=g, dtype=torch.float64)
    q[1], p[1] = q[0] + 0.1, p[0]
    masked = contrastive_loss(q, p, None, T, torch.tensor([0, 0, 1, 2])).logits
    without = contrastive_loss(q[[0, 2, 3]], p[[0, 2, 3]], None, T).logits
    torch.testing.assert_close(torch.log_softmax(masked[0], 0)[[0, 2, 3]], torch.log_softmax(without[0], 0))


@pytest.mark.parametrize("chunk_size", [1, 4])
def test_cached_loss_masks_the_same_negatives(chunk_size: int) -> None:
    b = len(KEYS)
    queries, passages = make_inputs(b, seed=1), make_inputs(2 * b, seed=2)
    model = encoder(dropout=0.0)
    model.zero_grad()
    out = cached_contrastive_backward(
        lambda c: model(**c), queries, passages, chunk_size, ContrastiveLoss(T), passage_keys=KEYS
    )
    got = grads(model)
    model.zero_grad()
    p = model(**passages)
    want = reference_loss(model(**queries), p[:b], p[b:], KEYS)
    want.backward()
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert int(out.masked) == 8
    assert_grads_close(got, grads(model))


def reference_loss_with_negative_keys(q: Tensor, p: Tensor, n: Tensor, keys: Tensor, neg_keys: Tensor) -> Tensor:
    """Per query, cross-entropy over the candidates left once every column with its key is removed."""
    candidates, cand_keys = torch.cat([p, n]), torch.cat([keys, neg_keys])
    losses = []
    for i in range(q.shape[0]):
        keep = [j for j in range(candidates.shape[0]) if j == i or cand_keys[j] < 0 or cand_keys[j] != keys[i]]
        scores = F.normalize(q[i], dim=-1) @ F.normalize(candidates[keep], dim=-1).T / T
        losses.append(torch.logsumexp(scores, 0) - scores[keep.index(i)])
    return torch.stack(losses).mean()


# One hard negative per row: row 3's is its own answer again, row 1's is rows 0/2/5's answer, the rest none.
NEGATIVE_KEYS = torch.tensor([-1, 7, -1, 9, -1, -1])


def test_hard_negatives_with_a_rows_key_are_masked_and_the_loss_equals_the_batch_without_them() -> None:
    g = torch.Generator().manual_seed(3)
    b = len(KEYS)
    q, p, n = (torch.randn(b, 8, generator=g, dtype=torch.float64) for _ in range(3))
    leaves = [x.clone().requires_grad_() for x in (q, p, n)]
    out = contrastive_loss(*leaves, T, KEYS, NEGATIVE_KEYS)
    out.loss.backward()
    ref = [x.clone().requires_grad_() for x in (q, p, n)]
    want = reference_loss_with_negative_keys(*ref, KEYS, NEGATIVE_KEYS)
    want.backward()
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-12)
    for got, expected in zip(leaves, ref, strict=True):
        torch.testing.assert_close(got.grad, expected.grad, rtol=1e-10, atol=1e-12)
    # 8 positive columns as before, plus negative 1 for rows 0, 2, 5 and negative 3 for row 3.
    assert int(out.masked) == 8 + 3 + 1
    mask = false_negative_mask(KEYS, 2 * b, NEGATIVE_KEYS)
    assert mask[:, b:].nonzero().tolist() == [[0, 1], [2, 1], [3, 3], [5, 1]]


@pytest.mark.parametrize("chunk_size", [1, 4])
def test_cached_loss_masks_the_same_hard_negatives(chunk_size: int) -> None:
    b = len(KEYS)
    queries, passages = make_inputs(b, seed=1), make_inputs(2 * b, seed=2)
    model = encoder(dropout=0.0)
    model.zero_grad()
    out = cached_contrastive_backward(
        lambda c: model(**c), queries, passages, chunk_size, ContrastiveLoss(T), passage_keys=KEYS,
        negative_keys=NEGATIVE_KEYS,
    )  # fmt: skip
    got = grads(model)
    model.zero_grad()
    p = model(**passages)
    want = reference_loss_with_negative_keys(model(**queries), p[:b], p[b:], KEYS, NEGATIVE_KEYS)
    want.backward()
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert int(out.masked) == 12
    assert_grads_close(got, grads(model))


# --- two processes (gloo): duplicates on different ranks are masked too ---------------------------------

WORLD = 2


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        b = len(KEYS) // WORLD
        queries, positives = make_inputs(len(KEYS), seed=5), make_inputs(len(KEYS), seed=6)
        local = slice(rank * b, (rank + 1) * b)
        q, p = ({k: v[local] for k, v in x.items()} for x in (queries, positives))
        model = DistributedDataParallel(encoder(dropout=0.0))
        emb = model(**{k: torch.cat([q[k], p[k]]) for k in q})
        out = ContrastiveLoss(T, gather=True)(emb[:b], emb[b:], None, KEYS[local])
        out.loss.backward()
        torch.save({"loss": out.loss.detach(), "masked": out.masked, **grads(model.module)}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gathered_negatives_are_masked_across_devices(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    model = encoder(dropout=0.0)
    want = reference_loss(model(**make_inputs(len(KEYS), seed=5)), model(**make_inputs(len(KEYS), seed=6)), None, KEYS)
    want.backward()
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got.pop("loss").item() == pytest.approx(want.item(), rel=1e-5)
        assert int(got.pop("masked")) == 8
        assert_grads_close(got, grads(model))


# --- passage keys -------------------------------------------------------------------------------------


def example(i: str, positives: dict[str, str], passage_ids: tuple[str, ...] = ()) -> ParallelExample:
    return ParallelExample(i, "qa", {lang: Translation(f"q{i}", text) for lang, text in positives.items()}, passage_ids=passage_ids)


def test_passage_keys_are_per_language() -> None:
    corpus = ParallelCorpus([
        example("a", {"en": "The  Cat sat.", "de": "Die Katze saß."}),
        example("b", {"en": "the cat sat.", "de": "Eine Katze saß."}),  # a's English text, normalised
        example("c", {"en": "A dog.", "de": "Die Katze saß."}),  # a's German text
        example("d", {"en": "Another.", "de": "Noch eins."}, passage_ids=("p1",)),
        example("e", {"en": "Different.", "de": "Anders."}, passage_ids=("p1",)),  # d's passage in every language
        example("f", {"en": "Alone.", "de": "Allein."}),
    ])
    keys = corpus.passage_keys()
    en = [keys.positive(i, "en") for i in range(6)]
    de = [keys.positive(i, "de") for i in range(6)]
    # a and b are the same passage in English only, a and c in German only: not b and c anywhere.
    assert en[0] == en[1] and len({en[0], en[2], en[3], en[5]}) == 4
    assert de[0] == de[2] and len({de[0], de[1], de[3], de[5]}) == 4
    assert en[3] == en[4] and de[3] == de[4] and en[3] != de[3]
    # A hard negative carries the key of the positive it is, in its own language only.
    assert keys.negatives("de", ["die katze saß.", "the cat sat.", "Noch eins."]) == [de[0], -1, de[3]]


def test_xquad_r_keys_per_language_before_and_after(xquad_r_dir: Path) -> None:
    """Before: one key per question, linked through any language (999 of 1,190 questions in shared
    groups, so 10,989 of the 13,090 (question, language) positives). After: per language, 7,400."""
    from hybatch.data.xquad_r_split import load_xquad_r_split

    data = load_xquad_r_split(xquad_r_dir, split={"train": 1.0})
    keys = data.train.passage_keys()
    shared = {lang: keys.shared_counts(lang)[0] for lang in data.train.languages()}
    assert len(data.train) == 1190
    assert shared["en"] == 656 and shared["th"] == 896  # Thai sentences are coarser
    assert sum(shared.values()) == 7400
    # No question's own hard negatives (the other sentences of its paragraph) are its answer, but
    # 31,229 of the 52,547 are another question's answer: masked for that question's row.
    own = other = total = 0
    for i, ex in enumerate(data.train.examples):
        for lang, t in ex.translations.items():
            found = keys.negatives(lang, t.negatives)
            total += len(found)
            own += sum(k == keys.positive(i, lang) for k in found)
            other += sum(k >= 0 for k in found)
    assert (own, other, total) == (0, 31229, 52547)


def test_parallel_jsonl_passage_id_is_optional_and_checked(tmp_path: Path) -> None:
    rows = [
        {"id": 1, "passage_id": "wiki-7", "translations": {"en": {"query": "q1", "positive": "one"}}},
        {"id": 2, "passage_id": "wiki-7", "translations": {"en": {"query": "q2", "positive": "two"}}},
        {"id": 3, "translations": {"en": {"query": "q3", "positive": "three"}}},
    ]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    keys = read_parallel_jsonl([path]).passage_keys()
    assert keys.positive(0, "en") == keys.positive(1, "en") != keys.positive(2, "en")
    path.write_text(json.dumps({**rows[0], "passage_id": ["x"]}) + "\n")
    with pytest.raises(ValueError, match=r"qa.jsonl:1: 'passage_id' must be a string or integer"):
        read_parallel_jsonl([path])


def test_collated_batches_carry_the_passage_keys() -> None:
    # Imported here: the spawned workers above re-import this module and need not pay for Lightning.
    from hybatch.collate import PairCollator
    from hybatch.datamodule import PairDataset
    from hybatch.samplers import BatchItem

    corpus = ParallelCorpus([
        ParallelExample("a", "qa", {"en": Translation("qa", "x", ("w", "u")), "de": Translation("qa", "y")}),
        example("b", {"en": "X", "de": "z"}),
        example("c", {"en": "w", "de": "v"}),
    ])

    class Tokenizer:
        def __call__(self, texts, **kwargs):
            return {"input_ids": torch.zeros(len(texts), 2, dtype=torch.int64)}

    dataset = PairDataset(corpus, num_hard_negatives=2)
    batch = PairCollator(Tokenizer(), "", "", 8, 8)([dataset[BatchItem(i, "de", "en")] for i in range(3)])
    keys = batch["passage_key"].tolist()
    assert keys[0] == keys[1] != keys[2]
    # a's negative "w" is c's English positive; "u" is nobody's.
    assert batch["negative_keys"].tolist() == [keys[2], -1]
