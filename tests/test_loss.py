"""Tests for the contrastive loss, cross-device gathering and gradient caching."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import assert_grads_close, encoder, free_port, grads, make_inputs
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from hybatch.loss import (
    ContrastiveLoss,
    cached_contrastive_backward,
    contrastive_loss,
    gather_across_ranks,
    split_inputs,
)

# --- the loss against a hand computation ---------------------------------------------------------------

Q = [[1.0, 0.0], [1.0, 1.0]]
P = [[2.0, 1.0], [0.0, 1.0]]
N = [[1.0, -0.1]]


def hand_loss(
    queries: Sequence[Sequence[float]], candidates: Sequence[Sequence[float]], t: float
) -> tuple[float, float, list[list[float]]]:
    """Plain-python InfoNCE: returns (mean loss, accuracy, score matrix)."""

    def cos(a: Sequence[float], b: Sequence[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    total, correct, scores = 0.0, 0, []
    for i, q in enumerate(queries):
        row = [cos(q, c) / t for c in candidates]
        total += -row[i] + math.log(sum(math.exp(s) for s in row))
        correct += max(range(len(row)), key=row.__getitem__) == i
        scores.append(row)
    return total / len(queries), correct / len(queries), scores


@pytest.mark.parametrize("t", [0.05, 1.0])
@pytest.mark.parametrize("with_negatives", [False, True])
def test_loss_matches_hand_computation(with_negatives: bool, t: float) -> None:
    candidates = P + N if with_negatives else P
    want_loss, want_acc, want_scores = hand_loss(Q, candidates, t)
    negatives = torch.tensor(N, dtype=torch.float64) if with_negatives else None
    out = contrastive_loss(
        torch.tensor(Q, dtype=torch.float64), torch.tensor(P, dtype=torch.float64), negatives, t
    )
    assert out.loss.item() == pytest.approx(want_loss, rel=1e-12)
    assert out.accuracy.item() == want_acc
    torch.testing.assert_close(out.logits, torch.tensor(want_scores, dtype=torch.float64), rtol=1e-12, atol=0)


def test_accuracy_and_temperature_effect() -> None:
    # q1 is closer to p0 than to its own p1; the hard negative beats q0's positive.
    assert hand_loss(Q, P, 1.0)[1] == 0.5
    assert contrastive_loss(torch.tensor(Q), torch.tensor(P), None, 1.0).accuracy.item() == 0.5
    assert contrastive_loss(torch.tensor(Q), torch.tensor(P), torch.tensor(N), 1.0).accuracy.item() == 0.0
    # Logits scale as 1/t; with correct rankings, a lower temperature sharpens towards zero loss.
    q = torch.eye(3)
    cold, warm = (contrastive_loss(q, q + 0.1, None, t) for t in (0.05, 1.0))
    torch.testing.assert_close(cold.logits * 0.05, warm.logits * 1.0)
    assert cold.loss.item() < 1e-6 < warm.loss.item()
    assert warm.loss.item() == pytest.approx(hand_loss(q.tolist(), (q + 0.1).tolist(), 1.0)[0], rel=1e-6)


def test_loss_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="temperature"):
        contrastive_loss(torch.ones(2, 3), torch.ones(2, 3), None, 0.0)
    with pytest.raises(ValueError, match="queries"):
        contrastive_loss(torch.ones(2, 3), torch.ones(3, 3))


def test_gather_and_module_are_identity_without_process_group() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    assert gather_across_ranks(x) is x
    q, p = torch.randn(4, 8), torch.randn(4, 8)
    torch.testing.assert_close(ContrastiveLoss(0.1)(q, p).loss, contrastive_loss(q, p, None, 0.1).loss)


# --- gradient caching ----------------------------------------------------------------------------------


def test_split_inputs() -> None:
    inputs = make_inputs(7, seed=0)
    chunks = split_inputs(inputs, 3)
    assert [c["input_ids"].shape[0] for c in chunks] == [3, 3, 1]
    for key in inputs:
        torch.testing.assert_close(torch.cat([c[key] for c in chunks]), inputs[key])
    with pytest.raises(ValueError, match="chunk_size"):
        split_inputs(inputs, 0)
    with pytest.raises(ValueError, match="share dim 0"):
        split_inputs({"a": torch.ones(2), "b": torch.ones(3)}, 1)


def uncached_step(
    model: nn.Module,
    queries: dict[str, Tensor],
    passages: dict[str, Tensor],
    chunk_size: int,
    temperature: float,
) -> tuple[float, dict[str, Tensor]]:
    """Reference: one graph over the whole batch. Embeds in the same chunks and order as the cached
    step so that active dropout draws the same masks; the gradient itself comes from a single backward."""
    model.zero_grad()
    q = torch.cat([model(**c) for c in split_inputs(queries, chunk_size)])
    p = torch.cat([model(**c) for c in split_inputs(passages, chunk_size)])
    b = q.shape[0]
    loss = contrastive_loss(q, p[:b], p[b:] if p.shape[0] > b else None, temperature).loss
    loss.backward()
    return loss.item(), grads(model)


@pytest.mark.parametrize("with_negatives", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 4, 5, 6, 100])
def test_cached_gradients_match_uncached_with_dropout(chunk_size: int, with_negatives: bool) -> None:
    b = 6
    queries = make_inputs(b, seed=1)
    passages = make_inputs(2 * b if with_negatives else b, seed=2)
    model = encoder(dropout=0.3).train()
    loss_fn = ContrastiveLoss(temperature=0.05)

    torch.manual_seed(123)
    want_loss, want = uncached_step(model, queries, passages, chunk_size, 0.05)
    rng_after_reference = torch.get_rng_state()

    torch.manual_seed(123)
    model.zero_grad()
    out = cached_contrastive_backward(lambda c: model(**c), queries, passages, chunk_size, loss_fn)
    assert out.loss.item() == pytest.approx(want_loss, rel=1e-6)
    assert out.logits.shape == (b, passages["input_ids"].shape[0])
    assert_grads_close(grads(model), want)
    # The generator continues exactly as after an ordinary forward pass.
    assert torch.equal(torch.get_rng_state(), rng_after_reference)

    # Dropout is really active: other masks give other gradients.
    torch.manual_seed(321)
    _, other = uncached_step(model, queries, passages, chunk_size, 0.05)
    assert not torch.allclose(other["proj.weight"], want["proj.weight"], atol=1e-4)


def test_cached_backward_through_lightning_manual_backward() -> None:
    # Imported here: the DDP test's spawned workers re-import this module and need not pay for Lightning.
    import lightning as L

    class ManualModule(L.LightningModule):
        """Drives `cached_contrastive_backward` through Lightning's `manual_backward`."""

        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.encoder = encoder(dropout=0.0)
            self.loss_fn = ContrastiveLoss(temperature=0.05)
            self.seen: dict[str, Tensor] = {}

        def training_step(self, batch: tuple[dict[str, Tensor], dict[str, Tensor]], batch_idx: int) -> None:
            queries, passages = batch
            out = cached_contrastive_backward(
                lambda c: self.encoder(**c),
                queries,
                passages,
                3,
                self.loss_fn,
                backward_fn=self.manual_backward,
            )
            self.seen = {"loss": out.loss, **grads(self.encoder)}

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.0)

    queries, passages = make_inputs(4, seed=3), make_inputs(8, seed=4)
    module = ManualModule()
    trainer = L.Trainer(
        max_epochs=1,  # not max_steps: manual optimisation counts steps only on optimizer.step()
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader([(queries, passages)], batch_size=None))
    want_loss, want = uncached_step(encoder(dropout=0.0), queries, passages, 3, 0.05)
    assert module.seen.pop("loss").item() == pytest.approx(want_loss, rel=1e-6)
    assert_grads_close(module.seen, want)


# --- two processes (gloo) against one process with the global batch ------------------------------------

WORLD, H = 2, 1
# Local batch sizes per case; "uneven" checks that gathering rows of different counts stays exact.
DDP_CASES = {"plain": (3, 3), "cached": (3, 3), "uneven": (3, 2)}
DDP_CHUNK = 2  # does not divide the local batch of 3


def global_batch(sizes: Sequence[int]) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    n = sum(sizes)
    return make_inputs(n, seed=5), make_inputs(n, seed=6), make_inputs(n * H, seed=7)


def local_slice(
    inputs: dict[str, Tensor], sizes: Sequence[int], rank: int, rows_per_example: int = 1
) -> dict[str, Tensor]:
    start = sum(sizes[:rank]) * rows_per_example
    return {k: v[start : start + sizes[rank] * rows_per_example] for k, v in inputs.items()}


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results: dict[str, dict[str, Tensor]] = {}
        for case, sizes in DDP_CASES.items():
            queries, positives, negatives = global_batch(sizes)
            q, p = local_slice(queries, sizes, rank), local_slice(positives, sizes, rank)
            n = local_slice(negatives, sizes, rank, H)
            model = DistributedDataParallel(encoder(dropout=0.0))
            loss_fn = ContrastiveLoss(temperature=0.05, gather=True)
            if case == "cached":
                passages = {k: torch.cat([p[k], n[k]]) for k in p}
                out = cached_contrastive_backward(
                    lambda c, m=model: m(**c), q, passages, DDP_CHUNK, loss_fn, no_sync=model.no_sync
                )
            else:
                # One DDP forward for all three groups (one forward per backward, as DDP expects).
                emb = model(**{k: torch.cat([q[k], p[k], n[k]]) for k in q})
                b = q["input_ids"].shape[0]
                out = loss_fn(emb[:b], emb[b : 2 * b], emb[2 * b :])
                out.loss.backward()
            results[case] = {"loss": out.loss.detach(), **grads(model.module)}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, dict[str, Tensor]]]:
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_ddp_worker, args=(free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("case", list(DDP_CASES))
def test_ddp_gather_equals_single_process_global_batch(
    ddp_results: list[dict[str, dict[str, Tensor]]], case: str
) -> None:
    queries, positives, negatives = global_batch(DDP_CASES[case])
    model = encoder(dropout=0.0)
    out = contrastive_loss(model(**queries), model(**positives), model(**negatives), 0.05)
    out.loss.backward()
    want = grads(model)
    for rank_results in ddp_results:
        got = dict(rank_results[case])
        assert got.pop("loss").item() == pytest.approx(out.loss.item(), rel=1e-6)
        assert_grads_close(got, want)
