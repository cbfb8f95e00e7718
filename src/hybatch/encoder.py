"""The dual encoder: a Hugging Face backbone, pooling, optional projection and L2 normalisation.

A plain `nn.Module` (no Lightning) so that a trained encoder can be exported as a folder that
loads in both `sentence_transformers.SentenceTransformer` and `transformers.AutoModel`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from hybatch.collate import tokenize
from hybatch.models.lora import apply_lora, is_lora, lora_kwargs, merged_copy

log = logging.getLogger(__name__)

Role = Literal["query", "passage"]
POOLINGS = ("cls", "mean", "last_token")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SETTINGS_FILE = "hybatch_encoder.json"
_ST_POOLING = {"cls": "cls", "mean": "mean", "last_token": "lasttoken"}
_ACTIVATIONS = {
    None: nn.Identity,
    "identity": nn.Identity,
    "tanh": nn.Tanh,
    "torch.nn.modules.linear.Identity": nn.Identity,
    "torch.nn.modules.activation.Tanh": nn.Tanh,
}


class EncoderConfigError(ValueError):
    """The encoder was configured with something it cannot load or use."""


def pool(hidden: Tensor, attention_mask: Tensor, mode: str) -> Tensor:
    """Pool token states (B, T, H) into one vector per text; padding never contributes."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if mode == "last_token":
        # Position of the last real token, right or left padding alike.
        last = attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise EncoderConfigError(f"model.pooling={mode!r}: expected one of {POOLINGS}")


def _local_or_hub_file(name_or_path: str, filename: str) -> Path | None:
    """A file of a local folder or hub repo, or None when it is not there (or the hub is unreachable)."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        return local / filename if (local / filename).is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(name_or_path, filename))
    except Exception:  # noqa: BLE001 - absent file, offline or unknown repo: the caller falls back
        return None


def read_sentence_transformers_settings(name_or_path: str) -> dict[str, Any]:
    """Pooling, prompts, projection and normalisation stored in a sentence-transformers folder."""
    settings: dict[str, Any] = {}
    modules_file = _local_or_hub_file(name_or_path, "modules.json")
    if modules_file is None:
        return settings
    modules = json.loads(modules_file.read_text())
    settings["normalize"] = any(m["type"].endswith("Normalize") for m in modules)
    for module in modules:
        if module["type"].endswith("Pooling"):
            pooling_file = _local_or_hub_file(name_or_path, f"{module['path']}/config.json")
            if pooling_file is not None:
                cfg = json.loads(pooling_file.read_text())
                mode = cfg.get("pooling_mode")
                if mode is None:
                    mode = next(
                        (ours for ours, st in _ST_POOLING.items() if cfg.get(f"pooling_mode_{st}_token") or cfg.get(f"pooling_mode_{st}_tokens")),
                        None,
                    )
                if isinstance(mode, list) and len(mode) == 1:
                    mode = mode[0]
                inverse = {st: ours for ours, st in _ST_POOLING.items()}
                if mode not in inverse:
                    raise EncoderConfigError(f"{pooling_file}: pooling {mode!r} is not one of {sorted(inverse)}")
                settings["pooling"] = inverse[mode]
        if module["type"].endswith("Dense"):
            settings["dense_path"] = module["path"]
    st_config = _local_or_hub_file(name_or_path, "config_sentence_transformers.json")
    if st_config is not None:
        prompts = json.loads(st_config.read_text()).get("prompts") or {}
        if "query" in prompts:
            settings["query_prefix"] = prompts["query"]
        passage = prompts.get("passage", prompts.get("document"))
        if passage is not None:
            settings["passage_prefix"] = passage
    return settings


class DualEncoder(nn.Module):
    """Queries and passages through one shared backbone (or two towers), pooled and normalised.

    `name_or_path` is a hub id, a Hugging Face folder, a sentence-transformers folder (its pooling,
    prompts and Dense layer are read from it and win over the arguments) or a folder written by
    `save_pretrained`. `backbone` / `tokenizer` bypass loading (models built in code).

    For big backbones: `dtype` (float32 | bfloat16 | float16) is the dtype the weights are loaded and
    kept in (bfloat16 halves the memory of a frozen LoRA base; mixed precision is the trainer's
    `precision`); `lora` (a mapping of r, alpha, dropout, target_modules, see `hybatch.models.lora`)
    trains adapters instead of the weights; `gradient_checkpointing` recomputes activations in backward;
    `freeze_embeddings` keeps the (250k-row, for XLM-R) embedding matrix out of the optimizer.
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        pooling: str = "mean",
        normalize: bool = True,
        query_prefix: str = "",
        passage_prefix: str = "",
        query_max_length: int = 64,
        passage_max_length: int = 256,
        separate_towers: bool = False,
        projection_dim: int | None = None,
        trust_remote_code: bool = False,
        gradient_checkpointing: bool = False,
        freeze_embeddings: bool = False,
        dtype: str | None = None,
        lora: Mapping[str, Any] | None = None,
        backbone: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        super().__init__()
        if dtype is not None and dtype not in DTYPES:
            raise EncoderConfigError(f"model.dtype={dtype!r}: expected null or one of {sorted(DTYPES)}")
        torch_dtype = DTYPES[dtype] if dtype is not None else None
        dense: nn.Linear | None = None
        activation: nn.Module = nn.Identity()
        passage_backbone: PreTrainedModel | None = None
        if backbone is None:
            if not name_or_path:
                raise EncoderConfigError("model.name_or_path is required when no backbone is built in code")
            saved = _local_or_hub_file(name_or_path, SETTINGS_FILE)
            if saved is not None:
                # Our own export: the settings it was trained with.
                settings = json.loads(saved.read_text())
                pooling, normalize = settings["pooling"], settings["normalize"]
                query_prefix, passage_prefix = settings["query_prefix"], settings["passage_prefix"]
                query_max_length = settings["query_max_length"]
                passage_max_length = settings["passage_max_length"]
                separate_towers = settings["separate_towers"]
            if separate_towers and saved is not None:
                root = Path(name_or_path)
                backbone, tokenizer = _load_backbone(str(root / "query"), trust_remote_code, torch_dtype)
                passage_backbone, _ = _load_backbone(str(root / "passage"), trust_remote_code, torch_dtype)
                dense, activation = _load_dense(str(root / "query"))
                st_settings = {}
            else:
                backbone, tokenizer = _load_backbone(name_or_path, trust_remote_code, torch_dtype)
                st_settings = read_sentence_transformers_settings(name_or_path)
                if "dense_path" in st_settings:
                    dense, activation = _load_dense(name_or_path)
            if saved is None and st_settings:
                log.info("%s: using its sentence-transformers settings %s", name_or_path, st_settings)
                pooling = st_settings.get("pooling", pooling)
                normalize = st_settings.get("normalize", normalize)
                query_prefix = st_settings.get("query_prefix", query_prefix)
                passage_prefix = st_settings.get("passage_prefix", passage_prefix)
        elif tokenizer is None:
            raise EncoderConfigError("a backbone built in code needs its tokenizer too")
        elif torch_dtype is not None:
            backbone = backbone.to(torch_dtype)
        if pooling not in POOLINGS:
            raise EncoderConfigError(f"model.pooling={pooling!r}: expected one of {POOLINGS}")
        if tokenizer.pad_token_id is None:
            # Decoder LLMs often ship without a pad token; padding is masked out anyway.
            tokenizer.pad_token = tokenizer.eos_token
        if pooling == "last_token":
            tokenizer.padding_side = "right"

        self.name_or_path = name_or_path
        self.pooling = pooling
        self.normalize = normalize
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
        self.tokenizer = tokenizer
        self.backbone = backbone
        if separate_towers and passage_backbone is None:
            passage_backbone = copy.deepcopy(backbone)
        hidden = backbone.config.hidden_size
        for tower in (backbone, passage_backbone):
            if tower is None:
                continue
            if getattr(tower, "pooler", None) is not None:
                # BERT-style poolers are never used here (`pool` reads the token states); their weights
                # would get no gradient, which DDP refuses unless it searches for unused parameters.
                tower.pooler = None
            if getattr(tower.config, "use_cache", False):
                # Decoder LLMs would build a key/value cache on every forward; an encoder never reuses it.
                tower.config.use_cache = False
        if lora:
            backbone = apply_lora(backbone, **lora_kwargs(lora))
            if passage_backbone is not None:
                passage_backbone = apply_lora(passage_backbone, **lora_kwargs(lora))
        self.backbone = backbone
        self.passage_backbone = passage_backbone
        if dense is None and projection_dim:
            dense = nn.Linear(hidden, projection_dim)
        self.projection = dense
        self.projection_activation = activation
        for tower in self.towers():
            if gradient_checkpointing:
                _enable_checkpointing(tower)
            if freeze_embeddings:
                tower.get_input_embeddings().requires_grad_(False)

    @property
    def separate_towers(self) -> bool:
        return self.passage_backbone is not None

    @property
    def dim(self) -> int:
        return self.projection.out_features if self.projection is not None else self.backbone.config.hidden_size

    def towers(self) -> list[PreTrainedModel]:
        return [self.backbone] + ([self.passage_backbone] if self.passage_backbone is not None else [])

    def prefix(self, role: Role) -> str:
        return self.query_prefix if role == "query" else self.passage_prefix

    def max_length(self, role: Role) -> int:
        return self.query_max_length if role == "query" else self.passage_max_length

    def tokenize(self, texts: Sequence[str], role: Role) -> dict[str, Tensor]:
        """Prefix and tokenize; texts longer than the role's max length are truncated."""
        return tokenize(self.tokenizer, texts, self.prefix(role), self.max_length(role))

    def forward(self, features: dict[str, Tensor], role: Role = "query") -> Tensor:
        """Embed tokenized texts: (B, dim), unit norm when `normalize`."""
        tower = self.passage_backbone if role == "passage" and self.passage_backbone is not None else self.backbone
        inputs = {k: v for k, v in features.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = tower(**inputs).last_hidden_state
        emb = pool(hidden, features["attention_mask"], self.pooling)
        if self.projection is not None:
            emb = self.projection_activation(self.projection(emb))
        return F.normalize(emb, dim=-1) if self.normalize else emb

    @torch.no_grad()
    def encode(
        self,
        texts: Sequence[str],
        role: Role,
        batch_size: int = 64,
        progress: bool = True,
        device: str | torch.device | None = None,
    ) -> Tensor:
        """Embed many texts for retrieval: batched by length, half precision on GPU; float32 CPU result."""
        if device is None:
            device = next(self.parameters()).device
        device = torch.device(device)
        was_training = self.training
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        out = torch.empty(len(texts), self.dim, dtype=torch.float32)
        autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
        batches = range(0, len(order), batch_size)
        for start in tqdm(batches, desc="encoding queries" if role == "query" else "encoding passages", disable=not progress, unit="batch"):
            idx = order[start : start + batch_size]
            features = {k: v.to(device) for k, v in self.tokenize([texts[i] for i in idx], role).items()}
            with autocast:
                emb = self(features, role)
            out[idx] = emb.float().cpu()
        self.train(was_training)
        return out

    def settings(self) -> dict[str, Any]:
        return {
            "pooling": self.pooling,
            "normalize": self.normalize,
            "query_prefix": self.query_prefix,
            "passage_prefix": self.passage_prefix,
            "query_max_length": self.query_max_length,
            "passage_max_length": self.passage_max_length,
            "separate_towers": self.separate_towers,
        }

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write a folder that loads in sentence-transformers (prompts included), AutoModel and here.

        With separate towers, `query/` and `passage/` are each such a folder.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.separate_towers:
            _save_sentence_transformer(self, _exportable(self.backbone), path / "query")
            _save_sentence_transformer(self, _exportable(self.passage_backbone), path / "passage")
        else:
            _save_sentence_transformer(self, _exportable(self.backbone), path)
        (path / SETTINGS_FILE).write_text(json.dumps(self.settings(), indent=2) + "\n")
        return path


def _enable_checkpointing(tower: nn.Module) -> None:
    """Recompute each layer's activations in backward. Non-reentrant: works with frozen inputs
    (embeddings, LoRA) and under FSDP. transformers 5 renamed gradient to activation checkpointing."""
    enable = getattr(tower, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        tower.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _exportable(tower: nn.Module) -> PreTrainedModel:
    """The tower as a plain Hugging Face model: LoRA adapters merged into a copy of the weights."""
    return merged_copy(tower) if is_lora(tower) else tower


def _load_backbone(
    name_or_path: str, trust_remote_code: bool, dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        backbone = AutoModel.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, dtype=dtype)
    except OSError as err:
        raise EncoderConfigError(
            f"model.name_or_path={name_or_path!r} is neither a local model folder nor a reachable "
            f"Hugging Face hub id (offline machines: use model=me5_small_bundled or a local folder): {err}"
        ) from err
    if tokenizer.pad_token_id is not None and backbone.config.pad_token_id not in (None, tokenizer.pad_token_id):
        log.warning("%s: config.pad_token_id=%s differs from the tokenizer's %s", name_or_path, backbone.config.pad_token_id, tokenizer.pad_token_id)
    return backbone, tokenizer


def _load_dense(name_or_path: str) -> tuple[nn.Linear, nn.Module]:
    """The Dense layer of a sentence-transformers folder (LaBSE has one)."""
    settings = read_sentence_transformers_settings(name_or_path)
    sub = settings["dense_path"]
    cfg_file = _local_or_hub_file(name_or_path, f"{sub}/config.json")
    if cfg_file is None:
        raise EncoderConfigError(f"{name_or_path}: {sub}/config.json is missing")
    cfg = json.loads(cfg_file.read_text())
    act_name = cfg.get("activation_function")
    if act_name not in _ACTIVATIONS:
        raise EncoderConfigError(f"{cfg_file}: activation_function {act_name!r} is not one of {sorted(k for k in _ACTIVATIONS if k)}")
    linear = nn.Linear(cfg["in_features"], cfg["out_features"], bias=cfg.get("bias", True))
    weights = _local_or_hub_file(name_or_path, f"{sub}/model.safetensors")
    if weights is not None:
        from safetensors.torch import load_file

        state = load_file(str(weights))
    else:
        weights = _local_or_hub_file(name_or_path, f"{sub}/pytorch_model.bin")
        if weights is None:
            raise EncoderConfigError(f"{name_or_path}: no weights in {sub}/")
        state = torch.load(weights, map_location="cpu", weights_only=True)
    linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    return linear, _ACTIVATIONS[act_name]()


def _save_sentence_transformer(encoder: DualEncoder, tower: PreTrainedModel, path: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    path.mkdir(parents=True, exist_ok=True)
    tower.save_pretrained(path, safe_serialization=True)
    encoder.tokenizer.save_pretrained(path)
    modules: list[nn.Module] = [
        Transformer(str(path), max_seq_length=encoder.passage_max_length),
        Pooling(tower.config.hidden_size, pooling_mode=_ST_POOLING[encoder.pooling]),
    ]
    if encoder.projection is not None:
        proj = encoder.projection
        modules.append(
            Dense(
                proj.in_features,
                proj.out_features,
                bias=proj.bias is not None,
                activation_function=copy.deepcopy(encoder.projection_activation),
                init_weight=proj.weight.detach().cpu().clone(),
                init_bias=proj.bias.detach().cpu().clone() if proj.bias is not None else None,
            )
        )
    if encoder.normalize:
        modules.append(Normalize())
    model = SentenceTransformer(
        modules=modules,
        prompts={"query": encoder.query_prefix, "passage": encoder.passage_prefix},
        similarity_fn_name="cosine",
        device="cpu",
    )
    model.save(str(path))
