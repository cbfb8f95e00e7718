"""A directory of prepared parallel JSONL files (`prepare_data.py`'s out_dir) as one training mixture."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hybatch.data.parallel_jsonl import JsonlFormatError, load_parallel_jsonl
from hybatch.data.training_data import TrainingData


def prepared_files(
    directory: str | os.PathLike, datasets: Sequence[str] | None = None, key: str = "data.source.directory"
) -> list[Path]:
    """Every `<dataset>.jsonl` and `<dataset>.shard-*.jsonl` in `directory` (hidden temporary files of
    an unfinished preparation are not matched), or only those of `datasets`; errors name `key`, the
    override that gave `directory`."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise JsonlFormatError(f"{key}={str(root)!r} is not a directory (prepare_data.py's out_dir)")
    files = sorted(p for p in root.glob("*.jsonl") if not p.name.startswith("."))
    found = {p.name.split(".")[0] for p in files}
    if datasets is not None:
        missing = sorted(set(datasets) - found)
        if missing:
            raise JsonlFormatError(f"data.source.datasets has {missing}, not in {root}; it holds {sorted(found)}")
        files = [p for p in files if p.name.split(".")[0] in set(datasets)]
    if not files:
        raise JsonlFormatError(f"{key}={str(root)!r}: no prepared *.jsonl file in it")
    return files


def load_prepared_directory(
    directory: str | os.PathLike,
    datasets: Sequence[str] | None = None,
    val: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    test: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> TrainingData:
    """Train on every prepared file of `directory` (each file name is its dataset); val / test as in
    `load_parallel_jsonl` (relative paths under `data_dir`)."""
    train = [str(p) for p in prepared_files(directory, datasets)]
    return load_parallel_jsonl(train, val, test, data_dir=data_dir, cache_dir=cache_dir)
