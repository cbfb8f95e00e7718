"""Files that appear whole or not at all: checkpoints, metrics.json, run info, prepared data.

A reader, or a run killed mid-write, sees the old file or the new one, never half of one: the data go
to a hidden temporary file next to the target (`.<name>.<random>.tmp`, which no `*.jsonl` / `*.ckpt`
pattern matches), which is renamed over it once complete. The temporary name is unique, so several
processes (DDP ranks) may write the same file at once.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, durable: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on a clean exit it replaces `path`, on an error it is removed.

    `durable`: fsync the data and the directory too, so the new file survives a power loss (checkpoints,
    prepared data), not only a killed process.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    tmp = temporary_name(path)
    # O_EXCL: a fresh file; mode 0o666 minus the umask, like any file the user writes.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_directory(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def fsync_directory(directory: Path) -> None:
    """Make a rename itself durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
