"""Big-backbone configs without their weights, and the memory options they rely on.

Each big `conf/model/*.yaml` is instantiated through Hydra exactly as train.py does, with the hub
loader replaced by the published architecture built on the meta device (sizes checked, no memory) or
by a tiny variant of the same architecture that really trains a step. LoRA (peft), the FSDP wrap
policy, mixed precision, gradient checkpointing and frozen embeddings are checked on the same models.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.distributed.fsdp.wrap import _recursive_wrap
from transformers import (
    AutoModel,
    BertConfig,
    BertModel,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen3Config,
    XLMRobertaXLConfig,
)

import hybatch.encoder.dual_encoder
import hybatch.encoder.sentence_transformers_folder
from hybatch.backbones.bundled import bundled_tokenizer
from hybatch.backbones.fsdp_policy import TransformerBlockPolicy
from hybatch.config import CONFIG_DIR
from hybatch.encoder import DualEncoder
from hybatch.encoder.checkpoints import CheckpointMismatchError, load_deepspeed_encoder_weights
from hybatch.lightning_module import DualEncoderModule
from hybatch.loss import ContrastiveLoss, contrastive_loss

# The published architectures (config.json of each hub repo) and their parameter counts.
ARCHITECTURES: dict[str, tuple[PretrainedConfig, float]] = {
    "facebook/xlm-roberta-xl": (
        XLMRobertaXLConfig(vocab_size=250880, hidden_size=2560, num_hidden_layers=36, num_attention_heads=32,
                           intermediate_size=10240, max_position_embeddings=514),
        3.48e9,
    ),
    "facebook/xlm-roberta-xxl": (
        XLMRobertaXLConfig(vocab_size=250880, hidden_size=4096, num_hidden_layers=48, num_attention_heads=32,
                           intermediate_size=16384, max_position_embeddings=514),
        10.7e9,
    ),
    "intfloat/e5-mistral-7b-instruct": (
        MistralConfig(vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, intermediate_size=14336),
        7.11e9,
    ),
    "Qwen/Qwen3-Embedding-8B": (
        Qwen3Config(vocab_size=151665, hidden_size=4096, num_hidden_layers=36, num_attention_heads=32,
                    num_key_value_heads=8, intermediate_size=12288, head_dim=128),
        7.57e9,
    ),
}  # fmt: skip
CONFIGS = {
    "xlmr_xl": "facebook/xlm-roberta-xl",
    "xlmr_xxl": "facebook/xlm-roberta-xxl",
    "e5_mistral_7b": "intfloat/e5-mistral-7b-instruct",
    "qwen3_embedding_8b": "Qwen/Qwen3-Embedding-8B",
}
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_variant(config: PretrainedConfig, vocab_size: int) -> PretrainedConfig:
    """The same architecture class at a few thousand parameters per layer."""
    values = {**config.to_dict(), **TINY, "vocab_size": vocab_size}
    values.pop("layer_types", None)  # one entry per layer: derived again from num_hidden_layers
    if "num_key_value_heads" in values:
        values.update(num_key_value_heads=2, head_dim=8)
    return type(config)(**values)


@pytest.fixture(scope="module")
def tokenizer(cache_dir: Path):
    """A real multilingual tokenizer stands in for each model's own (which needs the hub)."""
    return bundled_tokenizer(cache_dir)


def model_config(name: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[f"model={name}", *overrides]).model


@pytest.fixture
def offline_loader(monkeypatch: pytest.MonkeyPatch, tokenizer) -> Callable[[str], list[str]]:
    """Replace the hub: `use("meta")` builds published sizes on the meta device, `use("tiny")` tiny
    variants on CPU. Returns the list of (name, dtype) the encoder asked for."""
    requests: list[Any] = []

    def use(size: str) -> list[Any]:
        def load(name: str, trust_remote_code: bool, dtype: torch.dtype | None = None) -> tuple[PreTrainedModel, Any]:
            requests.append((name, dtype))
            config, _ = ARCHITECTURES[name]
            if size == "meta":
                with torch.device("meta"):
                    return AutoModel.from_config(config, dtype=dtype), tokenizer
            torch.manual_seed(0)
            return AutoModel.from_config(tiny_variant(config, len(tokenizer)), dtype=dtype), tokenizer

        monkeypatch.setattr(hybatch.encoder.dual_encoder, "_load_backbone", load)
        monkeypatch.setattr(hybatch.encoder.sentence_transformers_folder, "_local_or_hub_file", lambda *_: None)
        return requests

    return use


def tiny_bert_encoder(tokenizer: Any, **kwargs: Any) -> DualEncoder:
    """The same weights every call, dropout off (so that two encoders' gradients can be compared)."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, **TINY)  # fmt: skip
    return DualEncoder(backbone=BertModel(config, add_pooling_layer=False), tokenizer=tokenizer, **kwargs).train()


def checkpointing(model: nn.Module) -> bool:
    flag = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.x
    return flag if flag is not None else model.is_gradient_checkpointing


def trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_big_config_instantiates_the_published_architecture_on_meta(config_name: str, offline_loader) -> None:
    requests = offline_loader("meta")
    cfg = model_config(config_name)
    encoder: DualEncoder = instantiate(cfg)
    hub_id = CONFIGS[config_name]
    assert requests == [(hub_id, torch.float32)]
    total = sum(p.numel() for p in encoder.parameters())
    # The HF pooler is dropped (unused, and DDP would find it without gradient); LoRA adds a little.
    assert total == pytest.approx(ARCHITECTURES[hub_id][1], rel=0.02)
    assert all(p.device.type == "meta" for p in encoder.parameters())
    assert getattr(encoder.backbone, "pooler", None) is None
    assert checkpointing(encoder.backbone)
    assert not encoder.backbone.config.use_cache
    assert encoder.pooling == cfg.pooling
    if cfg.lora:
        assert 0 < trainable(encoder) < 0.01 * total
        assert all("lora_" in n for n, p in encoder.named_parameters() if p.requires_grad)
    else:
        assert trainable(encoder) == total


def _texts_step(encoder: DualEncoder) -> Tensor:
    """One contrastive training step's loss on two multilingual pairs (backward done)."""
    queries = encoder.tokenize(["Wie viele Punkte?", "How many points?"], "query")
    passages = encoder.tokenize(["Es gab 24 Punkte.", "There were 24 points."], "passage")
    loss = ContrastiveLoss(0.05)(encoder(queries, "query"), encoder(passages, "passage")).loss
    loss.backward()
    return loss


@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_tiny_variant_of_each_big_config_trains(config_name: str, offline_loader) -> None:
    offline_loader("tiny")
    encoder: DualEncoder = instantiate(model_config(config_name)).train()
    loss = _texts_step(encoder)
    assert torch.isfinite(loss)
    with_grad = {n for n, p in encoder.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in encoder.named_parameters() if p.requires_grad}
    nonzero = {n for n in with_grad if encoder.get_parameter(n).grad.abs().sum() > 0}
    if model_config(config_name).lora:
        # Only the adapters train; B starts at zero, so at the first step only B has a gradient.
        assert nonzero and all("lora_B" in n for n in nonzero)
    else:
        assert nonzero == with_grad


def test_fsdp_policy_shards_each_transformer_block(offline_loader) -> None:
    """The policy of conf/trainer/fsdp.yaml, run by FSDP's own recursive wrapping (with a stand-in
    wrapper: FSDP itself needs CUDA in Lightning), on an XL encoder with LoRA inside a module."""
    offline_loader("tiny")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        trainer_cfg = compose("train", overrides=["trainer=fsdp"]).trainer
    strategy = instantiate(trainer_cfg.strategy)
    assert type(strategy).__name__ == "FSDPStrategy" and strategy.kwargs["use_orig_params"]
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, TransformerBlockPolicy)

    root = nn.ModuleDict({"encoder": instantiate(model_config("xlmr_xl", "+model.lora={r: 4}"))})
    wrapped: list[str] = []

    def wrapper(module: nn.Module, **_: Any) -> nn.Module:
        wrapped.append(type(module).__name__)
        return module

    _recursive_wrap(root, policy, wrapper, ignored_modules=set(), ignored_params=set())
    assert sorted(wrapped) == ["XLMRobertaXLEmbeddings"] + ["XLMRobertaXLLayer"] * TINY["num_hidden_layers"]


def test_trainer_configs_compose() -> None:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        trainers = {name: compose("train", overrides=[f"trainer={name}"]).trainer for name in ("cpu", "gpu", "ddp", "ddp_cpu", "fsdp", "deepspeed")}
    assert trainers["ddp_cpu"].devices == 2 and trainers["ddp_cpu"].accelerator == "cpu"
    assert trainers["deepspeed"].strategy._target_.endswith("DeepSpeedStrategy")
    # The batch sampler composes the global batch for every strategy.
    assert not any(t.use_distributed_sampler for t in trainers.values())


@pytest.mark.parametrize("strategy", ["FSDPStrategy", "DeepSpeedStrategy"])
def test_module_refuses_the_cached_loss_where_lightning_cannot_run_it(strategy: str, tokenizer) -> None:
    import lightning.pytorch.strategies as strategies

    module = DualEncoderModule(tiny_bert_encoder(tokenizer), grad_cache_chunk_size=4)
    instance = getattr(strategies, strategy).__new__(getattr(strategies, strategy))
    module.trainer = SimpleNamespace(strategy=instance, world_size=8)
    with pytest.raises(ValueError, match="grad_cache_chunk_size=4"):
        module.setup("fit")


def test_module_refuses_deepspeed_stage_3(tokenizer) -> None:
    """Stage 3 leaves each rank a partition of every parameter: no whole weights to test or export."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    module = DualEncoderModule(tiny_bert_encoder(tokenizer))
    strategy = DeepSpeedStrategy.__new__(DeepSpeedStrategy)
    strategy.config = {"zero_optimization": {"stage": 3}}
    module.trainer = SimpleNamespace(strategy=strategy, world_size=8)
    with pytest.raises(ValueError, match="stage 3 partitions the parameters"):
        module.setup("fit")
    strategy.config = {"zero_optimization": {"stage": 2}}
    module.setup("fit")


def test_deepspeed_checkpoint_directory_loads_into_the_encoder(tmp_path: Path, tokenizer, monkeypatch) -> None:
    """The merged ZeRO state dict (keys under Lightning's `_forward_module.`) becomes the encoder's weights;
    a merge that does not fit the encoder is refused by name. DeepSpeed itself is not installed here:
    its zero_to_fp32 merge is stood in for by the state dict it returns."""
    import sys

    trained, fresh = tiny_bert_encoder(tokenizer), tiny_bert_encoder(tokenizer)
    merged = {f"_forward_module.encoder.{k}": v.float() + 1 for k, v in trained.state_dict().items()}
    calls = []

    def merge(checkpoint_dir: str, tag: str | None = None) -> dict[str, Tensor]:
        calls.append(checkpoint_dir)
        return merged

    zero_to_fp32 = SimpleNamespace(get_fp32_state_dict_from_zero_checkpoint=merge)
    monkeypatch.setitem(sys.modules, "deepspeed", SimpleNamespace())
    monkeypatch.setitem(sys.modules, "deepspeed.utils", SimpleNamespace(zero_to_fp32=zero_to_fp32))
    monkeypatch.setitem(sys.modules, "deepspeed.utils.zero_to_fp32", zero_to_fp32)
    ckpt_dir = tmp_path / "epoch=0-step=3.ckpt"
    load_deepspeed_encoder_weights(fresh, ckpt_dir)
    assert calls == [str(ckpt_dir)]
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, merged[f"_forward_module.encoder.{key}"].to(value.dtype)), key

    merged.pop(next(iter(merged)))
    with pytest.raises(CheckpointMismatchError, match=r"epoch=0-step=3.ckpt does not fit the configured encoder.*missing"):
        load_deepspeed_encoder_weights(fresh, ckpt_dir)


# --- memory options ----------------------------------------------------------------------------------


def test_loss_stays_float32_under_autocast() -> None:
    """bf16 autocast would run the similarity matmul in bf16, where cosine/0.05 loses two digits."""
    q, p = torch.randn(8, 16), torch.randn(8, 16)
    want = contrastive_loss(q, p)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = contrastive_loss(q.bfloat16(), p.bfloat16())
    assert got.logits.dtype == torch.float32
    torch.testing.assert_close(got.loss, want.loss, rtol=2e-2, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        exact = contrastive_loss(q, p)
    torch.testing.assert_close(exact.logits, want.logits)


def test_gradient_checkpointing_and_frozen_embeddings_keep_the_gradients(tokenizer) -> None:
    plain = tiny_bert_encoder(tokenizer)
    _texts_step(plain)
    checkpointed = tiny_bert_encoder(tokenizer, gradient_checkpointing=True, freeze_embeddings=True)
    _texts_step(checkpointed)
    embeddings = checkpointed.backbone.get_input_embeddings().weight
    assert not embeddings.requires_grad and embeddings.grad is None
    want = dict(plain.named_parameters())
    for name, param in checkpointed.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.grad, want[name].grad, rtol=1e-5, atol=1e-6, msg=name)


def test_lora_export_merges_adapters_into_a_plain_model(tmp_path: Path, tokenizer) -> None:
    pytest.importorskip("peft")
    encoder = tiny_bert_encoder(tokenizer, lora={"r": 4}).eval()
    with torch.no_grad():  # LoRA starts as the identity (B = 0): give the adapters something to merge
        for name, param in encoder.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    texts = ["Wie viele Punkte?", "¿Cuántos puntos?"]
    want = encoder.encode(texts, "query", progress=False)
    encoder.save_pretrained(tmp_path / "model")
    reloaded = DualEncoder.from_pretrained(str(tmp_path / "model"))
    assert not any("lora_" in n for n, _ in reloaded.named_parameters())
    torch.testing.assert_close(reloaded.encode(texts, "query", progress=False), want, rtol=1e-5, atol=1e-5)
    # The trained encoder keeps its adapters.
    assert any("lora_" in n for n, _ in encoder.named_parameters())


def test_lora_alpha_is_lora_alpha_and_the_old_key_still_works_with_a_warning(caplog) -> None:
    from hybatch.encoder.lora import lora_kwargs

    assert lora_kwargs({"r": 4, "lora_alpha": 8}) == {"r": 4, "lora_alpha": 8}
    with caplog.at_level("WARNING"):
        assert lora_kwargs({"r": 4, "alpha": 8}) == {"r": 4, "lora_alpha": 8}
    assert "model.lora.alpha is deprecated" in caplog.text and "model.lora.lora_alpha" in caplog.text
    with pytest.raises(ValueError, match="both 'alpha' \\(deprecated\\) and 'lora_alpha'"):
        lora_kwargs({"alpha": 8, "lora_alpha": 8})
