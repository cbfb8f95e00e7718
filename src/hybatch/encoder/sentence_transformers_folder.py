"""The folder format of an encoder: sentence-transformers folders (read) and our export (read and write).

A sentence-transformers folder keeps, beside the Hugging Face model, the pooling (`1_Pooling/`), an
optional Dense layer (LaBSE has one), L2 normalisation, the prompts and the longest input
(`max_seq_length`). Our export (`DualEncoder.save_pretrained`) is such a folder plus
`hybatch_encoder.json`, every setting it was trained with. With separate towers, `query/` and
`passage/` are each such a folder, and the root is one sentence-transformers model whose Router
module sends `encode_query` to the first and `encode_document` to the second.
Files are read from a local folder or, for a hub id, downloaded from the hub.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

SETTINGS_FILE = "hybatch_encoder.json"
# sentence-transformers' Router routes of a separate-towers export -> the tower folders.
ROUTES = {"query": "query", "document": "passage"}
EXPORT_KEYS = (
    "pooling", "normalize", "query_prefix", "passage_prefix", "query_max_length", "passage_max_length", "separate_towers"
)  # fmt: skip
ST_POOLING = {"cls": "cls", "mean": "mean", "last_token": "lasttoken"}
_ACTIVATIONS = {
    None: nn.Identity,
    "identity": nn.Identity,
    "tanh": nn.Tanh,
    "torch.nn.modules.linear.Identity": nn.Identity,
    "torch.nn.modules.activation.Tanh": nn.Tanh,
}


class ExportableEncoder(Protocol):
    """What writing the folder needs of an encoder (`hybatch.encoder.DualEncoder` is one); a protocol, so
    that this module, which the encoder uses to read folders, does not import the encoder back."""

    tokenizer: PreTrainedTokenizerBase
    pooling: str
    normalize: bool
    query_prefix: str
    passage_prefix: str
    query_max_length: int
    passage_max_length: int
    projection: nn.Linear | None
    projection_activation: nn.Module

    def settings(self) -> dict[str, Any]: ...


class FolderFormatError(ValueError):
    """A model folder holds a file this module cannot read (unknown pooling or activation, missing weights)."""


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


def _read_json(name_or_path: str, filename: str) -> dict[str, Any] | list[Any] | None:
    found = _local_or_hub_file(name_or_path, filename)
    return None if found is None else json.loads(found.read_text(encoding="utf-8"))


def read_export_settings(name_or_path: str) -> dict[str, Any] | None:
    """The settings a folder written by `save_pretrained` was trained with; None for any other folder."""
    settings = _read_json(name_or_path, SETTINGS_FILE)
    if settings is None:
        return None
    missing = [key for key in EXPORT_KEYS if key not in settings]
    if missing:
        raise FolderFormatError(f"{name_or_path}/{SETTINGS_FILE} lacks {missing}: expected the keys {list(EXPORT_KEYS)}")
    return {key: settings[key] for key in EXPORT_KEYS}


def read_settings(name_or_path: str) -> dict[str, Any]:
    """What a sentence-transformers folder says: `pooling`, `normalize`, `query_prefix` / `passage_prefix`
    (its prompts), `max_seq_length` and `dense_path` (the Dense layer's subfolder); {} for a plain
    Hugging Face folder or hub id. Only the keys the folder sets are returned."""
    modules = _read_json(name_or_path, "modules.json")
    if modules is None:
        return {}
    settings: dict[str, Any] = {"normalize": any(m["type"].endswith("Normalize") for m in modules)}
    for module in modules:
        if module["type"].endswith("Pooling"):
            pooling = _read_pooling(name_or_path, module["path"])
            if pooling is not None:
                settings["pooling"] = pooling
        if module["type"].endswith("Dense"):
            settings["dense_path"] = module["path"]
    prompts = (_read_json(name_or_path, "config_sentence_transformers.json") or {}).get("prompts") or {}
    if "query" in prompts:
        settings["query_prefix"] = prompts["query"]
    passage = prompts.get("passage", prompts.get("document"))
    if passage is not None:
        settings["passage_prefix"] = passage
    max_seq_length = _read_max_seq_length(name_or_path)
    if max_seq_length is not None:
        settings["max_seq_length"] = max_seq_length
    return settings


def _read_max_seq_length(name_or_path: str) -> int | None:
    """sentence-transformers < 6 keeps it in sentence_bert_config.json; 6 as the tokenizer's model_max_length."""
    value = (_read_json(name_or_path, "sentence_bert_config.json") or {}).get("max_seq_length")
    if value is None:
        value = (_read_json(name_or_path, "tokenizer_config.json") or {}).get("model_max_length")
    return int(value) if isinstance(value, (int, float)) else None


def _read_pooling(name_or_path: str, subfolder: str) -> str | None:
    """Our name for the pooling mode of a Pooling module's config (both of sentence-transformers' spellings)."""
    cfg = _read_json(name_or_path, f"{subfolder}/config.json")
    if cfg is None:
        return None
    mode = cfg.get("pooling_mode")
    if mode is None:
        mode = next(
            (st for st in ST_POOLING.values() if cfg.get(f"pooling_mode_{st}_token") or cfg.get(f"pooling_mode_{st}_tokens")),
            None,
        )
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    ours = {st: name for name, st in ST_POOLING.items()}
    if mode not in ours:
        raise FolderFormatError(f"{name_or_path}/{subfolder}/config.json: pooling {mode!r} is not one of {sorted(ours)}")
    return ours[mode]


def load_dense(name_or_path: str, subfolder: str) -> tuple[nn.Linear, nn.Module]:
    """The Dense layer of a sentence-transformers folder and its activation (tensors-only loading)."""
    where = f"{name_or_path}/{subfolder}"
    cfg = _read_json(name_or_path, f"{subfolder}/config.json")
    if cfg is None:
        raise FolderFormatError(f"{where}/config.json is missing")
    act_name = cfg.get("activation_function")
    if act_name not in _ACTIVATIONS:
        known = sorted(k for k in _ACTIVATIONS if k)
        raise FolderFormatError(f"{where}/config.json: activation_function {act_name!r} is not one of {known}")
    linear = nn.Linear(cfg["in_features"], cfg["out_features"], bias=cfg.get("bias", True))
    weights = _local_or_hub_file(name_or_path, f"{subfolder}/model.safetensors")
    if weights is not None:
        from safetensors.torch import load_file

        state = load_file(str(weights))
    else:
        weights = _local_or_hub_file(name_or_path, f"{subfolder}/pytorch_model.bin")
        if weights is None:
            raise FolderFormatError(f"{where}: no model.safetensors or pytorch_model.bin")
        state = torch.load(weights, map_location="cpu", weights_only=True)
    linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    return linear, _ACTIVATIONS[act_name]()


def save_export(encoder: ExportableEncoder, path: Path, towers: dict[str, PreTrainedModel]) -> Path:
    """Write `encoder` as a sentence-transformers folder (or one per tower, named by `towers`' keys,
    when it has several) plus its settings file. `towers` are plain Hugging Face models (LoRA merged)."""
    path.mkdir(parents=True, exist_ok=True)
    if len(towers) == 1:
        _save_tower(encoder, next(iter(towers.values())), path, encoder.passage_max_length)
    else:
        for name, tower in towers.items():
            _save_tower(encoder, tower, path / name, encoder.query_max_length if name == "query" else encoder.passage_max_length)
        _write_router(encoder, path, ROUTES)
    (path / SETTINGS_FILE).write_text(json.dumps(encoder.settings(), indent=2) + "\n", encoding="utf-8")
    return path


def _write_router(encoder: ExportableEncoder, path: Path, routes: Mapping[str, str]) -> None:
    """Make the folder of separate towers ONE sentence-transformers model: a Router module at its root
    whose routes (`routes`: sentence-transformers' route -> our tower folder) run the modules already
    written in each tower's folder, so no weight is stored twice. `encode_query` takes the query
    tower, `encode_document` (and `encode` without a task) the passage tower."""
    from sentence_transformers.sentence_transformer.modules import Router

    types: dict[str, str] = {}
    structure: dict[str, list[str]] = {}
    for route, folder in routes.items():
        structure[route] = []
        for module in json.loads((path / folder / "modules.json").read_text(encoding="utf-8")):
            module_id = f"{folder}/{module['path']}" if module["path"] else folder
            types[module_id] = module["type"]
            structure[route].append(module_id)
    router = {"types": types, "structure": structure, "parameters": {"default_route": "document", "allow_empty_key": True}}
    (path / Router.config_file_name).write_text(json.dumps(router, indent=2) + "\n", encoding="utf-8")
    modules = [{"idx": 0, "name": "0", "path": "", "type": f"{Router.__module__}.{Router.__name__}"}]
    (path / "modules.json").write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
    tower_config = json.loads((path / routes["query"] / "config_sentence_transformers.json").read_text(encoding="utf-8"))
    tower_config["default_prompt_name"] = None
    (path / "config_sentence_transformers.json").write_text(json.dumps(tower_config, indent=2) + "\n", encoding="utf-8")


def _save_tower(encoder: ExportableEncoder, tower: PreTrainedModel, path: Path, max_seq_length: int) -> None:
    """One sentence-transformers folder: the model, tokenizer, pooling, Dense, Normalize and prompts;
    `max_seq_length` is the longest input of the role(s) the tower serves."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    path.mkdir(parents=True, exist_ok=True)
    tower.save_pretrained(path, safe_serialization=True)
    encoder.tokenizer.save_pretrained(path)
    modules: list[nn.Module] = [
        Transformer(str(path), max_seq_length=max_seq_length),
        Pooling(tower.config.hidden_size, pooling_mode=ST_POOLING[encoder.pooling]),
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
        # "document" is the prompt `encode_document` takes; "passage" the name this project documents.
        prompts={"query": encoder.query_prefix, "document": encoder.passage_prefix, "passage": encoder.passage_prefix},
        similarity_fn_name="cosine",
        device="cpu",
    )
    model.save(str(path))
