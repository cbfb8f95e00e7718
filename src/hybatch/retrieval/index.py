"""FAISS inner-product indexes and resumable, memory-mapped corpus embeddings on disk.

A corpus is encoded into fixed-size shards (`shard-00000.npy` + `ids-00000.txt`) listed in a small
`manifest.json`; a shard enters the manifest only once fully written, so an interrupted run resumes
at the first missing shard. Shards are memory-mapped, so neither encoding nor indexing (shard by
shard) nor exact search (`search_shards`) ever needs the whole corpus in RAM.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import faiss
import numpy as np
import torch
from tqdm.auto import tqdm

from hybatch.atomic import atomic_write_text

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_FORMAT = 1
# Embeddings of this text are kept in the manifest: a resumed run must reproduce them, which catches
# shards written by another model or checkpoint.
_PROBE = "hybatch embedding probe: the quick brown fox jumps over the lazy dog."


class TextEncoder(Protocol):
    """What evaluation needs from an encoder (`hybatch.encoder.DualEncoder` is one)."""

    def encode(
        self,
        texts: Sequence[str],
        role: Literal["query", "passage"],
        batch_size: int = 64,
        progress: bool = True,
    ) -> torch.Tensor:
        """Float32, L2-normalised CPU embeddings (n, d)."""
        ...


class ShardStoreError(RuntimeError):
    """An embedding shard directory is missing, corrupt or was written with other settings."""


def _as_float32(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def _write_json_atomic(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))


@dataclass
class EmbeddingShards:
    """A finished (or partly finished) shard directory; see the module docstring."""

    directory: Path
    manifest: dict

    @classmethod
    def open(cls, directory: str | os.PathLike) -> EmbeddingShards:
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise ShardStoreError(f"{path} does not exist: not an embedding shard directory")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ShardStoreError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from err
        missing = {"format", "dim", "dtype", "shard_size", "role", "fingerprint", "probe", "shards", "complete"} - set(manifest)
        if missing or manifest["format"] != _FORMAT:
            raise ShardStoreError(f"{path}: expected format {_FORMAT} with keys {sorted(missing) or 'present'}; delete the directory to re-encode")
        return cls(directory, manifest)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def __len__(self) -> int:
        return sum(s["rows"] for s in self.manifest["shards"])

    def arrays(self) -> Iterator[np.ndarray]:
        """Each shard as a read-only memory map (n_i, dim)."""
        for shard in self.manifest["shards"]:
            arr = np.load(self.directory / shard["file"], mmap_mode="r")
            if arr.shape != (shard["rows"], self.dim):
                raise ShardStoreError(f"{self.directory / shard['file']}: shape {arr.shape}, manifest says ({shard['rows']}, {self.dim})")
            yield arr

    def ids(self) -> list[str]:
        """Document ids in row order (row i of the concatenated shards is ids()[i])."""
        out: list[str] = []
        for shard in self.manifest["shards"]:
            ids = (self.directory / shard["ids"]).read_text(encoding="utf-8").split("\n")[:-1]
            if len(ids) != shard["rows"]:
                raise ShardStoreError(f"{self.directory / shard['ids']}: {len(ids)} ids for {shard['rows']} rows")
            out.extend(ids)
        return out


def encode_shards(
    directory: str | os.PathLike,
    records: Iterable[tuple[str, str]],
    encoder: TextEncoder,
    *,
    role: Literal["query", "passage"] = "passage",
    fingerprint: str = "",
    shard_size: int = 100_000,
    batch_size: int = 64,
    dtype: Literal["float32", "float16"] = "float32",
    total: int | None = None,
    progress: bool = True,
) -> EmbeddingShards:
    """Encode `(id, text)` records into `directory`, skipping the shards a previous run finished.

    `fingerprint` names what the texts are (corpus, language, passage format): a directory written
    under another fingerprint, shard size, dtype or encoder is refused rather than silently mixed.
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype={dtype!r}: expected 'float32' or 'float16'")
    if shard_size < 1:
        raise ValueError(f"shard_size={shard_size}: expected a positive number of rows")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        probe = _as_float32(encoder.encode([_PROBE], role, batch_size=1, progress=False))[0]
    expected = {"fingerprint": fingerprint, "shard_size": shard_size, "dtype": dtype, "role": role, "dim": len(probe)}
    store = _open_or_create_store(directory, expected, probe)
    if store.complete:
        log.info("%s: all %d embeddings already encoded", directory, len(store))
        return store
    done = len(store)
    it = iter(records)
    skipped = sum(1 for _ in itertools.islice(it, done))
    if skipped != done:
        raise ShardStoreError(f"{directory}: the corpus now has {skipped} records, fewer than the {done} already encoded")
    bar = tqdm(total=total, initial=done, desc=f"encoding {directory.name}", unit="doc", disable=not progress)
    while rows := list(itertools.islice(it, shard_size)):
        _write_shard(store, rows, encoder, role, batch_size, dtype, first_record=done, bar=bar)
        done += len(rows)
    bar.close()
    store.manifest["complete"] = True
    _write_json_atomic(directory / MANIFEST, store.manifest)
    return store



def _open_or_create_store(directory: Path, expected: dict, probe: np.ndarray) -> EmbeddingShards:
    """The directory's store, refused when it was written for other texts or another encoder; else a new one."""
    if not (directory / MANIFEST).is_file():
        manifest = {"format": _FORMAT, **expected, "probe": probe.tolist(), "shards": [], "complete": False}
        _write_json_atomic(directory / MANIFEST, manifest)
        return EmbeddingShards(directory, manifest)
    store = EmbeddingShards.open(directory)
    found = {key: store.manifest[key] for key in expected}
    if found != expected:
        raise ShardStoreError(
            f"{directory / MANIFEST} was written with {found}, this run asks for {expected}; "
            "delete the directory or choose another one"
        )
    if float(np.dot(np.asarray(store.manifest["probe"], dtype=np.float32), probe)) < 0.999:
        raise ShardStoreError(f"{directory} holds embeddings of another encoder; delete it or choose another directory")
    if not store.complete:
        log.info("%s: resuming after %d finished shards", directory, len(store.manifest["shards"]))
    return store


def _write_shard(
    store: EmbeddingShards, rows: list, encoder: TextEncoder, role: str, batch_size: int, dtype: str, *, first_record: int, bar: tqdm
) -> None:
    """Encode one shard into a hidden memory-mapped file, rename it, then record it in the manifest:
    a killed run leaves at worst a `.part` file, which the next run overwrites."""
    directory = store.directory
    index = len(store.manifest["shards"])
    name, ids_name = f"shard-{index:05d}.npy", f"ids-{index:05d}.txt"
    for n, (doc_id, _) in enumerate(rows):
        if not isinstance(doc_id, str) or not doc_id or "\n" in doc_id:
            raise ShardStoreError(f"record {first_record + n}: document id {doc_id!r} must be a non-empty one-line string")
    piece = max(batch_size, 2048)
    tmp = directory / f".{name}.part"
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(rows), store.dim))
        for lo in range(0, len(rows), piece):
            texts = [text for _, text in rows[lo : lo + piece]]
            with torch.inference_mode():
                emb = encoder.encode(texts, role, batch_size=batch_size, progress=False)
            out[lo : lo + len(texts)] = _as_float32(emb)
            bar.update(len(texts))
        out.flush()
        del out
        os.replace(tmp, directory / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    atomic_write_text(directory / ids_name, "".join(f"{doc_id}\n" for doc_id, _ in rows))
    store.manifest["shards"].append({"file": name, "ids": ids_name, "rows": len(rows)})
    _write_json_atomic(directory / MANIFEST, store.manifest)

def _gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class DenseIndex:
    """Inner-product FAISS index: exact `flat` (default), or approximate `ivf` / `hnsw`.

    The index is moved to the GPU at the first search when faiss has GPU support and a GPU is
    present (`use_gpu=None`), except HNSW, which faiss only runs on the CPU.
    """

    KINDS = ("flat", "ivf", "hnsw")

    def __init__(
        self,
        dim: int,
        kind: str = "flat",
        *,
        nlist: int = 1024,
        nprobe: int = 32,
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        use_gpu: bool | None = None,
    ) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"index kind {kind!r}: expected one of {self.KINDS}")
        if use_gpu and not _gpu_available():
            raise RuntimeError("use_gpu=True but faiss has no GPU support or sees no GPU (install faiss-gpu)")
        self.dim, self.kind, self.nlist, self.nprobe = dim, kind, nlist, nprobe
        self.use_gpu = (_gpu_available() if use_gpu is None else use_gpu) and kind != "hnsw"
        self._on_gpu = False
        self._index: faiss.Index | None = None
        if kind == "flat":
            self._index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            self._index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self._index.hnsw.efConstruction = ef_construction
            self._index.hnsw.efSearch = ef_search

    @property
    def is_trained(self) -> bool:
        return self._index is not None and self._index.is_trained

    @property
    def ntotal(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)

    def train(self, sample: np.ndarray | torch.Tensor) -> None:
        """IVF only: learn the coarse clusters (about 40+ sample vectors per list; nlist shrinks to fit)."""
        if self.kind != "ivf":
            return
        sample = _as_float32(sample)
        nlist = max(1, min(self.nlist, len(sample) // 39))
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(sample)
        index.nprobe = min(self.nprobe, nlist)
        self._quantizer = quantizer  # the IVF index does not own it: keep it alive as long as the index
        self._index = index

    def add(self, vectors: np.ndarray | torch.Tensor) -> None:
        if not self.is_trained:
            raise RuntimeError("the ivf index must be trained (train() or add_shards()) before adding vectors")
        vectors = _as_float32(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors: expected shape (n, {self.dim}), got {vectors.shape}")
        self._index.add(vectors)

    def add_shards(self, store: EmbeddingShards, *, rows_per_add: int = 65_536, train_size: int | None = None,
                   seed: int = 0, progress: bool = True) -> None:
        """Add every shard (converted to float32 piece by piece); an untrained IVF index first trains on a random sample."""
        if store.dim != self.dim:
            raise ValueError(f"{store.directory}: embeddings of dim {store.dim}, index has dim {self.dim}")
        if not store.complete:
            raise ShardStoreError(f"{store.directory}: encoding did not finish; run encode_shards again to resume it")
        if not self.is_trained:
            self.train(_sample_rows(store, train_size or 64 * self.nlist, seed))
        with tqdm(total=len(store), desc="indexing", unit="vec", disable=not progress) as bar:
            for arr in store.arrays():
                for lo in range(0, len(arr), rows_per_add):
                    self.add(arr[lo : lo + rows_per_add])
                    bar.update(min(rows_per_add, len(arr) - lo))

    def search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, row ids), best first, each (n_queries, min(k, ntotal)); id -1 = no hit (IVF)."""
        if self.ntotal == 0:
            raise RuntimeError("search on an empty index")
        if self.use_gpu and not self._on_gpu:
            self._index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, self._index)
            self._on_gpu = True
        scores, ids = self._index.search(_as_float32(queries), min(k, self.ntotal))
        return scores, ids


def _sample_rows(store: EmbeddingShards, size: int, seed: int) -> np.ndarray:
    total = len(store)
    rows = np.sort(np.random.default_rng(seed).choice(total, size=min(size, total), replace=False))
    parts, offset = [], 0
    for arr in store.arrays():
        local = rows[(rows >= offset) & (rows < offset + len(arr))] - offset
        parts.append(np.asarray(arr[local], dtype=np.float32))
        offset += len(arr)
    return np.concatenate(parts)


def search_shards(
    store: EmbeddingShards,
    queries: np.ndarray | torch.Tensor,
    k: int,
    *,
    rows_per_block: int = 262_144,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k straight from the memory-mapped shards: RAM use is one block, not the corpus."""
    if not store.complete:
        raise ShardStoreError(f"{store.directory}: encoding did not finish; run encode_shards again to resume it")
    q = torch.from_numpy(_as_float32(queries))
    best_scores = torch.full((len(q), 0), -torch.inf)
    best_ids = torch.empty((len(q), 0), dtype=torch.int64)
    offset = 0
    with tqdm(total=len(store), desc="exact search", unit="vec", disable=not progress) as bar:
        for arr in store.arrays():
            for lo in range(0, len(arr), rows_per_block):
                block = torch.from_numpy(np.array(arr[lo : lo + rows_per_block], dtype=np.float32))  # a writable copy
                scores = torch.cat([best_scores, q @ block.T], 1)
                ids = torch.cat([best_ids, torch.arange(offset + lo, offset + lo + len(block)).expand(len(q), -1)], 1)
                best_scores, pos = scores.topk(min(k, scores.shape[1]), dim=1)
                best_ids = ids.gather(1, pos)
                bar.update(len(block))
            offset += len(arr)
    return best_scores.numpy(), best_ids.numpy()
