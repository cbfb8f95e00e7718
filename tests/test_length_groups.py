"""Embedding a batch in length groups (`embed_length_grouped`, `module.length_groups`): the same
embeddings, loss and gradients as one pass, with each pass padded only to its own longest text."""

from __future__ import annotations

import pytest
import torch

from hybatch.backbones.builders import tiny_dual_encoder
from hybatch.collate import PairCollator, tag_role
from hybatch.encoder import embed_length_grouped
from hybatch.lightning_module import DualEncoderModule
from hybatch.loss import cached_contrastive_backward

TEXTS = [
    "a",
    "a much longer text about the history of Warsaw and the river that runs through it",
    "short one",
    "Warsaw",
    "a medium length sentence about rivers",
    "b",
    "yet another text, of some length, with commas",
]


@pytest.fixture(scope="module")
def encoder(cache_dir, one_thread):
    # No dropout: one pass and several passes then compute exactly the same function.
    enc = tiny_dual_encoder(cache_dir=cache_dir, init_seed=3)
    for module in enc.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return enc


def features(encoder, texts=TEXTS):
    return encoder.tokenize(texts, "passage")


@pytest.mark.parametrize("groups", [1, 2, 3, 7, 20])
def test_grouped_embeddings_and_gradients_equal_one_pass(encoder, groups):
    feats = features(encoder)
    encoder.zero_grad()
    plain = encoder(feats, "passage")
    plain.square().sum().backward()
    want = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
    encoder.zero_grad()
    grouped = embed_length_grouped(encoder, feats, "passage", groups)
    grouped.square().sum().backward()
    torch.testing.assert_close(grouped, plain, atol=1e-5, rtol=1e-5)
    for name, grad in want.items():
        torch.testing.assert_close(dict(encoder.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4)


def test_each_pass_holds_similar_lengths_padded_to_its_longest(encoder):
    feats = features(encoder)
    lengths = feats["attention_mask"].sum(1)
    passes = []

    def spy(f, role):
        passes.append(f)
        return encoder(f, role)

    embed_length_grouped(spy, feats, "passage", 3)
    assert [f["input_ids"].shape[0] for f in passes] == [3, 2, 2]
    seen = torch.cat([f["attention_mask"].sum(1) for f in passes])
    assert seen.tolist() == sorted(lengths.tolist(), reverse=True)
    for f in passes:
        assert f["input_ids"].shape[1] == int(f["attention_mask"].sum(1).max())
        assert set(f) == set(feats)
    padded = sum(f["input_ids"].numel() for f in passes)
    assert padded < feats["input_ids"].numel()


def test_left_padded_batches_are_embedded_as_they_are(encoder):
    feats = features(encoder)
    mask = feats["attention_mask"]
    width = mask.shape[1]
    # The same rows, padded on the left.
    left = {k: torch.stack([torch.roll(v[i], width - int(mask[i].sum())) for i in range(len(v))]) for k, v in feats.items()}
    passes = []

    def spy(f, role):
        passes.append(f)
        return torch.zeros(f["input_ids"].shape[0], 2)

    embed_length_grouped(spy, left, "passage", 4)
    assert len(passes) == 1 and passes[0] is left


def test_groups_below_one_are_refused(encoder):
    with pytest.raises(ValueError, match="length groups must be >= 1, got 0"):
        embed_length_grouped(encoder, features(encoder), "passage", 0)
    with pytest.raises(ValueError, match="module.length_groups=0: expected"):
        DualEncoderModule(encoder, length_groups=0)


@pytest.mark.parametrize("chunk", [None, 3])
def test_the_module_loss_and_gradients_do_not_depend_on_the_groups(encoder, chunk):
    collate = PairCollator.from_encoder(encoder)
    rows = [
        {"id": str(i), "query": f"question {t}?", "positive": t, "negatives": [], "query_lang": "en", "passage_lang": "en"}
        for i, t in enumerate(TEXTS)
    ]
    batch = collate(rows)
    results = []
    for groups in (1, 3):
        module = DualEncoderModule(encoder, length_groups=groups, grad_cache_chunk_size=chunk, gather_negatives=False)
        encoder.zero_grad()
        if chunk is None:
            out = module.loss_fn(*module._embed(batch))
            out.loss.backward()
        else:
            out = cached_contrastive_backward(
                module._embed_role_tagged, tag_role(batch["query"], "query"), tag_role(batch["passage"], "passage"),
                chunk_size=chunk, loss_fn=module.loss_fn, backward_fn=lambda t, gradient: t.backward(gradient),
            )
        results.append((out.loss.detach(), {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-5, rtol=1e-4)


def test_auto_is_grouped_on_cpu_and_one_pass_on_an_accelerator(encoder, monkeypatch):
    from hybatch.lightning_module import AUTO_CPU_LENGTH_GROUPS

    module = DualEncoderModule(encoder)
    assert module.hparams.length_groups == "auto"
    assert module.length_groups == AUTO_CPU_LENGTH_GROUPS == 4
    monkeypatch.setattr(DualEncoderModule, "device", property(lambda self: torch.device("cuda", 0)))
    assert module.length_groups == 1
    assert DualEncoderModule(encoder, length_groups=2).length_groups == 2
    with pytest.raises(ValueError, match="module.length_groups='many': expected 'auto' or an integer >= 1"):
        DualEncoderModule(encoder, length_groups="many")
