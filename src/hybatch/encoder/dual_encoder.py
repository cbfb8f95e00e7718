"""The dual encoder: a Hugging Face backbone, pooling, optional projection and L2 normalisation.

A plain `nn.Module` (no Lightning) so that a trained encoder can be exported as a folder that
loads in both `sentence_transformers.SentenceTransformer` and `transformers.AutoModel`; the folder
format is `hybatch.encoder.sentence_transformers_folder`.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from hybatch.collate import tokenize
from hybatch.encoder import sentence_transformers_folder as st_folder
from hybatch.encoder.lora import apply_lora, is_lora, lora_kwargs, merged_copy

log = logging.getLogger(__name__)

Role = Literal["query", "passage"]
POOLINGS = ("cls", "mean", "last_token")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


class DualEncoder(nn.Module):
    """Queries and passages through one shared backbone (or two towers), pooled and normalised.

    Built from its parts: a Hugging Face `backbone` and its `tokenizer`, the settings (pooling,
    normalisation, prefixes, max lengths) and optionally a `passage_backbone` (or `separate_towers`:
    a copy of the backbone) and a `projection` (or `projection_dim`: a new one). `from_pretrained`
    loads one from a hub id or folder.

    For big backbones: `dtype` (float32 | bfloat16 | float16) is the dtype the weights are kept in
    (bfloat16 halves the memory of a frozen LoRA base; mixed precision is the trainer's `precision`);
    `lora` (a mapping of r, alpha, dropout, target_modules, see `hybatch.encoder.lora`) trains adapters
    instead of the weights; `gradient_checkpointing` recomputes activations in backward;
    `freeze_embeddings` keeps the (250k-row, for XLM-R) embedding matrix out of the optimizer.
    `name_or_path` is where the backbone came from (checkpoints record it); None when built in code.
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        pooling: str = "mean",
        normalize: bool = True,
        query_prefix: str = "",
        passage_prefix: str = "",
        query_max_length: int = 64,
        passage_max_length: int = 256,
        passage_backbone: PreTrainedModel | None = None,
        separate_towers: bool = False,
        projection: nn.Linear | None = None,
        projection_activation: nn.Module | None = None,
        projection_dim: int | None = None,
        gradient_checkpointing: bool = False,
        freeze_embeddings: bool = False,
        dtype: str | None = None,
        lora: Mapping[str, Any] | None = None,
        name_or_path: str | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise EncoderConfigError(f"model.pooling={pooling!r}: expected one of {POOLINGS}")
        _prepare_tokenizer(tokenizer, pooling)
        self.name_or_path = name_or_path
        # The training checkpoint the weights were loaded from, when they are not `name_or_path`'s
        # (`evaluate.py ckpt_path=...`): results must not be filed under the base model.
        self.weights_path: str | None = None
        self.pooling = pooling
        self.normalize = normalize
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
        self.tokenizer = tokenizer
        torch_dtype = _torch_dtype(dtype)
        if separate_towers and passage_backbone is None:
            passage_backbone = copy.deepcopy(backbone)
        hidden = backbone.config.hidden_size
        towers = [_prepare_tower(t, torch_dtype) for t in (backbone, passage_backbone) if t is not None]
        if lora:
            towers = [apply_lora(tower, **lora_kwargs(lora)) for tower in towers]
        self.backbone = towers[0]
        self.passage_backbone = towers[1] if len(towers) > 1 else None
        if projection is None and projection_dim:
            projection = nn.Linear(hidden, projection_dim)
        self.projection = projection
        self.projection_activation = projection_activation if projection_activation is not None else nn.Identity()
        for tower in self.towers():
            if gradient_checkpointing:
                _enable_checkpointing(tower)
            if freeze_embeddings:
                tower.get_input_embeddings().requires_grad_(False)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, *, trust_remote_code: bool = False, dtype: str | None = None, **config: Any
    ) -> DualEncoder:
        """Load a hub id, a Hugging Face folder, a sentence-transformers folder or a `save_pretrained` export.

        `config` holds the constructor's settings; the folder's own win: every setting of our export;
        the pooling, normalisation, prompts and Dense layer of a sentence-transformers folder, whose
        `max_seq_length` caps both max lengths (the longest input the model was set up for).
        """
        if not name_or_path:
            raise EncoderConfigError("model.name_or_path is required to load an encoder (null: build the model in code)")
        torch_dtype = _torch_dtype(dtype)
        exported = st_folder.read_export_settings(name_or_path)
        root = Path(name_or_path)
        if exported is not None and exported["separate_towers"]:
            backbone, tokenizer = _load_backbone(str(root / "query"), trust_remote_code, torch_dtype)
            config["passage_backbone"], _ = _load_backbone(str(root / "passage"), trust_remote_code, torch_dtype)
            folder = str(root / "query")
        else:
            backbone, tokenizer = _load_backbone(name_or_path, trust_remote_code, torch_dtype)
            folder = name_or_path
        st_settings = st_folder.read_settings(folder)
        if "dense_path" in st_settings:
            config["projection"], config["projection_activation"] = st_folder.load_dense(folder, st_settings["dense_path"])
        if exported is not None:
            config.update(exported)
        else:
            config.update(_settings_from_sentence_transformers(name_or_path, st_settings, config))
        return cls(backbone, tokenizer, dtype=dtype, name_or_path=name_or_path, **config)

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
        towers = {"query": self.backbone, "passage": self.passage_backbone} if self.separate_towers else {"": self.backbone}
        return st_folder.save_export(self, Path(path), {name: _exportable(t) for name, t in towers.items()})


def embed_length_grouped(
    embed: Callable[[dict[str, Tensor], Role], Tensor], features: dict[str, Tensor], role: Role, groups: int
) -> Tensor:
    """`embed(features, role)` in `groups` forward passes over the rows sorted by length, each padded
    only to its own longest text; rows come back in their order.

    A batch padded to its longest text spends most of a short text's compute on padding; grouping by
    length removes most of it (`groups=1` only cuts columns no row uses, e.g. in a chunk of a batch).
    The embeddings are those of one pass (padding is masked in attention and pooling) but dropout
    draws its masks per pass. Left-padded batches (some row not starting at column 0) are embedded as
    they are: cutting their columns would shift position ids.
    """
    if groups < 1:
        raise ValueError(f"length groups must be >= 1, got {groups}")
    mask = features["attention_mask"]
    rows = mask.shape[0]
    if rows == 0 or not bool(mask[:, 0].all()):
        return embed(features, role)
    lengths = mask.sum(1)
    if groups == 1:
        # Rows keep their order: for a collator batch (already padded to its longest) this is exactly
        # `embed(features, role)`, dropout draws included.
        width = int(lengths.max())
        return embed({k: v[:, :width] if v.dim() == 2 else v for k, v in features.items()}, role)
    order = torch.argsort(lengths, descending=True, stable=True)
    parts = []
    for idx in order.tensor_split(min(groups, rows)):
        width = int(lengths[idx[0]])
        parts.append(embed({k: v[idx, :width] if v.dim() == 2 else v[idx] for k, v in features.items()}, role))
    return torch.cat(parts)[torch.argsort(order)]


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


def _torch_dtype(dtype: str | None) -> torch.dtype | None:
    if dtype is not None and dtype not in DTYPES:
        raise EncoderConfigError(f"model.dtype={dtype!r}: expected null or one of {sorted(DTYPES)}")
    return DTYPES[dtype] if dtype is not None else None


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, pooling: str) -> None:
    if tokenizer.pad_token_id is None:
        # Decoder LLMs often ship without a pad token; padding is masked out anyway.
        tokenizer.pad_token = tokenizer.eos_token
    if pooling == "last_token":
        tokenizer.padding_side = "right"


def _prepare_tower(tower: PreTrainedModel, dtype: torch.dtype | None) -> PreTrainedModel:
    """Drop what an encoder never uses, in the dtype the weights are kept in."""
    if dtype is not None:
        tower = tower.to(dtype)
    if getattr(tower, "pooler", None) is not None:
        # BERT-style poolers are never used here (`pool` reads the token states); their weights
        # would get no gradient, which DDP refuses unless it searches for unused parameters.
        tower.pooler = None
    if getattr(tower.config, "use_cache", False):
        # Decoder LLMs would build a key/value cache on every forward; an encoder never reuses it.
        tower.config.use_cache = False
    return tower


def _settings_from_sentence_transformers(name_or_path: str, st: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The settings a sentence-transformers folder sets, over `config`'s."""
    found = {k: st[k] for k in ("pooling", "normalize", "query_prefix", "passage_prefix") if k in st}
    if "max_seq_length" in st:
        for key, default in (("query_max_length", 64), ("passage_max_length", 256)):
            found[key] = min(config.get(key, default), st["max_seq_length"])
    if found:
        log.info("%s: using its sentence-transformers settings %s", name_or_path, found)
    return found
