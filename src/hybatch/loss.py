"""Contrastive loss with in-batch (and hard) negatives, cross-device negatives and gradient caching.

For query i the candidates are every positive of the (global) batch followed by every hard negative;
its own positive is candidate i. Scores are cosine similarities divided by a temperature:

    loss = mean_i -log( exp(s(q_i, p_i) / t) / sum_j exp(s(q_i, d_j) / t) )

False negatives: with `passage_keys` (the identity of each row's positive in the language the batch
shows it, `hybatch.data.corpus.PassageKeys`) a candidate is left out of query i's candidates when it
is the same passage as i's positive: the positive of another row j with i's key, and any hard
negative whose key (`negative_keys`; -1: none) is i's, i's own negatives included. Scoring such a
candidate as a negative would push the query away from its answer. The masked logits are -inf, so
the loss and its gradients equal those computed without those columns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import get_device_states, set_device_states

Inputs = Mapping[str, Tensor]


class ContrastiveOutput(NamedTuple):
    """`loss` is the mean over queries; `accuracy` the fraction of queries whose own positive scores
    highest (no grad); `logits` the (queries x candidates) scores already divided by the temperature
    (-inf where masked); `masked` the number of (query, candidate) entries masked as false negatives."""

    loss: Tensor
    accuracy: Tensor
    logits: Tensor
    masked: Tensor


def false_negative_mask(passage_keys: Tensor, num_candidates: int, negative_keys: Tensor | None = None) -> Tensor:
    """(B, num_candidates) bool: True where candidate j is the same passage as query i's positive.

    Columns < B are the positives (key `passage_keys[j]`, the diagonal never masked), columns B.. the
    hard negatives (key `negative_keys[j - B]`; -1 or no `negative_keys`: never masked).
    """
    keys = passage_keys.reshape(-1)
    b = keys.shape[0]
    if negative_keys is None:
        negative_keys = torch.full((num_candidates - b,), -1, dtype=keys.dtype, device=keys.device)
    candidates = torch.cat([keys, negative_keys.reshape(-1).to(keys)])
    if candidates.shape[0] != num_candidates:
        raise ValueError(f"{negative_keys.numel()} negative keys for {num_candidates - b} hard negatives")
    same = (keys[:, None] == candidates[None, :]) & (candidates >= 0)[None, :]
    same[:, :b].fill_diagonal_(False)
    return same


def contrastive_loss(
    queries: Tensor,
    positives: Tensor,
    negatives: Tensor | None = None,
    temperature: float = 0.05,
    passage_keys: Tensor | None = None,
    negative_keys: Tensor | None = None,
) -> ContrastiveOutput:
    """InfoNCE over cosine similarities; candidates are `[positives; negatives]`, query i -> candidate i.

    `passage_keys` (B,) and `negative_keys` (one per hard negative, -1 for none) integers: candidates
    with a query's key are masked out of its candidates (see the module docstring). Scores are computed in at least float32: dividing
    bf16/fp16 cosines by a small temperature would otherwise throw away most of their precision.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if queries.shape[0] != positives.shape[0]:
        raise ValueError(f"{queries.shape[0]} queries but {positives.shape[0]} positives")
    if passage_keys is not None and passage_keys.reshape(-1).shape[0] != queries.shape[0]:
        raise ValueError(f"{passage_keys.numel()} passage keys for {queries.shape[0]} queries")
    candidates = positives if negatives is None else torch.cat([positives, negatives])
    dtype = torch.promote_types(queries.dtype, torch.float32)
    # Autocast (bf16/fp16-mixed) would run the matmul in half precision whatever the input dtype.
    with _no_autocast(queries.device.type):
        q = F.normalize(queries.to(dtype), dim=-1)
        c = F.normalize(candidates.to(dtype), dim=-1)
        logits = q @ c.T / temperature
        if passage_keys is None:
            masked = torch.zeros((), dtype=torch.int64, device=q.device)
        else:
            keys = None if negative_keys is None else negative_keys.to(q.device)
            mask = false_negative_mask(passage_keys.to(q.device), logits.shape[1], keys)
            logits = logits.masked_fill(mask, float("-inf"))
            masked = mask.sum()
        labels = torch.arange(q.shape[0], device=q.device)
        loss = F.cross_entropy(logits, labels)
    accuracy = (logits.detach().argmax(dim=-1) == labels).float().mean()
    return ContrastiveOutput(loss, accuracy, logits, masked)


def _no_autocast(device_type: str) -> AbstractContextManager[Any]:
    """Autocast switched off for `device_type` (a no-op where that device has no autocast)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_across_ranks(x: Tensor) -> Tensor:
    """All-gather `x` along dim 0 in rank order; only the local slice keeps its autograd graph.

    Other ranks' slices are constants, so backward yields the gradient w.r.t. the local rows only.
    Ranks may hold different numbers of rows (e.g. a smaller last batch): sizes are exchanged first and
    rows padded to the largest. Identity without an initialised process group or with one process.
    """
    world = _world_size()
    if world == 1:
        return x
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    rows = [int(s) for s in sizes]
    padded = x.detach().new_zeros((max(rows), *x.shape[1:]))
    padded[: x.shape[0]] = x.detach()
    slices = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(slices, padded)
    parts = [s[:n] for s, n in zip(slices, rows, strict=True)]
    parts[dist.get_rank()] = x
    return torch.cat(parts)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient multiplied by `factor`: scales gradients without changing the value."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.factor, None


class ContrastiveLoss(nn.Module):
    """`contrastive_loss`, computed over the global batch of all DDP ranks when `gather` is on.

    Every rank gathers queries, positives and negatives separately and builds
    `[all positives; all negatives]`, so label i still points at query i's positive; each rank thus
    computes the same global loss L, whose graph reaches only the local embeddings e_r. Backward on rank
    r gives J_r^T dL/de_r, while one process holding the global batch would get sum_r J_r^T dL/de_r; DDP
    (like FSDP and DeepSpeed) all-reduces the *mean* over the W ranks, i.e. (1/W) sum_r J_r^T dL/de_r.
    Multiplying the gradient flowing into the local embeddings by W therefore makes the averaged
    gradient exactly the single-process one (up to float rounding). The scaling is applied to the
    gradient, not the loss, so the returned loss is the true global-batch loss, the same on every rank,
    fit for logging and early stopping. Negatives are always gathered, as zero rows where a rank has
    none (e.g. no example of its slice has a hard negative): every rank must run the same collectives.
    `passage_keys` and `negative_keys` are gathered like the positives and negatives, so false
    negatives are masked across devices too; when gathering, pass them on every rank or on none.
    """

    def __init__(self, temperature: float = 0.05, gather: bool = True) -> None:
        super().__init__()
        self.temperature = temperature
        self.gather = gather

    def forward(
        self,
        queries: Tensor,
        positives: Tensor,
        negatives: Tensor | None = None,
        passage_keys: Tensor | None = None,
        negative_keys: Tensor | None = None,
    ) -> ContrastiveOutput:
        world = _world_size()
        if self.gather and world > 1:
            if negatives is None:
                negatives = positives.new_zeros((0, *positives.shape[1:]))
            if passage_keys is not None and negative_keys is None:
                negative_keys = torch.full((negatives.shape[0],), -1, dtype=torch.int64, device=positives.device)
            queries = gather_across_ranks(_ScaleGrad.apply(queries, world))
            positives = gather_across_ranks(_ScaleGrad.apply(positives, world))
            negatives = gather_across_ranks(_ScaleGrad.apply(negatives, world))
            if passage_keys is not None:
                passage_keys = gather_across_ranks(passage_keys.to(positives.device))
                negative_keys = gather_across_ranks(negative_keys.to(positives.device))
            if negatives.shape[0] == 0:
                negatives = negative_keys = None
        return contrastive_loss(queries, positives, negatives, self.temperature, passage_keys, negative_keys)


def split_inputs(inputs: Inputs, chunk_size: int) -> list[dict[str, Tensor]]:
    """Split a dict of tensors sharing dim 0 (input_ids, attention_mask, ...) into chunks of `chunk_size`
    rows (the last may be smaller)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    rows = {v.shape[0] for v in inputs.values()}
    if len(rows) != 1:
        raise ValueError(f"inputs must be non-empty and share dim 0, got sizes {sorted(rows)}")
    n = rows.pop()
    return [{k: v[i : i + chunk_size] for k, v in inputs.items()} for i in range(0, n, chunk_size)]


@dataclass(frozen=True)
class _RngState:
    """CPU and CUDA generator states taken before a chunk's no-grad forward, so that its re-forward
    draws the same dropout masks (the cached gradient is only valid for the same function)."""

    cpu: Tensor
    cuda_devices: list[int]
    cuda_states: list[Tensor]

    @classmethod
    def capture(cls, chunk: Inputs) -> _RngState:
        devices, states = get_device_states(*chunk.values())
        return cls(torch.get_rng_state(), devices, states)

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from this state, then give the generators back their state from before."""
        with torch.random.fork_rng(devices=self.cuda_devices):
            torch.set_rng_state(self.cpu)
            set_device_states(self.cuda_devices, self.cuda_states)
            yield


def cached_contrastive_backward(
    embed_fn: Callable[[dict[str, Tensor]], Tensor],
    query_inputs: Inputs,
    passage_inputs: Inputs,
    chunk_size: int,
    loss_fn: Callable[..., ContrastiveOutput],
    backward_fn: Callable[..., Any] = Tensor.backward,
    no_sync: Callable[[], AbstractContextManager[Any]] | None = None,
    passage_keys: Tensor | None = None,
    negative_keys: Tensor | None = None,
) -> ContrastiveOutput:
    """Gradient-cached contrastive step (Gao et al. 2021): the gradients of `loss_fn` over the whole batch
    with the activation memory of one chunk. Accumulates into `.grad`; returns the detached output.

    `passage_inputs` holds the B positives (B = number of queries) followed by any hard negatives (rows
    B.., in the order `loss_fn` expects them); they are embedded together, so the same `embed_fn` serves
    queries and passages. Steps:
    1. embed every chunk under `no_grad`, recording the RNG state (CPU and the CUDA devices of the chunk's
       tensors: keep inputs on the encoder's device) before each;
    2. compute the loss on the full batch from detached leaf embeddings and take d loss / d embedding
       (with `ContrastiveLoss(gather=True)` this is the cross-device loss, gradient already scaled by W);
    3. re-embed each chunk with grad from its recorded RNG state (identical dropout) and call
       `backward_fn(embeddings, gradient=cached_grad)` (default `Tensor.backward`). Pass Lightning's
       `self.manual_backward`, which forwards `gradient=` to `Tensor.backward` after AMP loss scaling.
    `passage_keys` and `negative_keys`, when given, go to `loss_fn` (false-negative masking).

    Under DDP every chunk's backward would all-reduce; only the last one should. Pass `no_sync`, a
    callable returning DDP's no-sync context (`ddp_model.no_sync`, or in Lightning
    `self.trainer.model.no_sync`): it wraps the re-forward and backward of all chunks but the last, which
    then all-reduces the accumulated gradients once. All ranks must run the same number of DDP forwards
    (each may broadcast buffers), so keep local batch sizes equal or call the bare module in `embed_fn`.
    """
    n_queries = next(iter(query_inputs.values())).shape[0]
    query_chunks = split_inputs(query_inputs, chunk_size)
    chunks = query_chunks + split_inputs(passage_inputs, chunk_size)

    states: list[_RngState] = []
    embeddings: list[Tensor] = []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_RngState.capture(chunk))
            embeddings.append(embed_fn(chunk))

    queries = torch.cat(embeddings[: len(query_chunks)]).requires_grad_()
    passages = torch.cat(embeddings[len(query_chunks) :]).requires_grad_()
    negatives = passages[n_queries:] if passages.shape[0] > n_queries else None
    keys = () if passage_keys is None else (passage_keys, negative_keys)
    out = loss_fn(queries, passages[:n_queries], negatives, *keys)
    query_grad, passage_grad = torch.autograd.grad(out.loss, [queries, passages])
    grads = query_grad.split(chunk_size) + passage_grad.split(chunk_size)

    for i, (chunk, state, grad) in enumerate(zip(chunks, states, grads, strict=True)):
        last = i == len(chunks) - 1
        with nullcontext() if no_sync is None or last else no_sync(), state.replay():
            backward_fn(embed_fn(chunk), gradient=grad)
    return ContrastiveOutput(out.loss.detach(), out.accuracy, out.logits.detach(), out.masked)
