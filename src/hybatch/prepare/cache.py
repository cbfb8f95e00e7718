"""A translation cache in SQLite: texts that repeat are translated once, and a killed run resumes.

Keyed by (model, source language, target language, sha256 of the text); `model` is the
translator's cache key, which includes its decoding settings, so changing the beam size does not
reuse old outputs. Every batch is committed as soon as it is translated: a run killed at any
point keeps everything it finished.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS translations (
    model TEXT NOT NULL,
    src TEXT NOT NULL,
    tgt TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    output TEXT NOT NULL,
    PRIMARY KEY (model, src, tgt, sha256)
) WITHOUT ROWID
"""
# SQLite's default limit on the number of `?` in one statement is 999 in old builds.
_CHUNK = 900


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TranslationCache:
    """`get` / `put` translations of texts for one (model, src, tgt); safe for concurrent shards on one host.

    Several processes may share the file (SQLite locks it; writers wait up to `timeout` seconds).
    On a network filesystem without reliable locks give each shard its own file.
    """

    def __init__(self, path: str | os.PathLike, timeout: float = 600.0) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=timeout)
        with self._db:
            self._db.execute(_SCHEMA)

    def get(self, model: str, src: str, tgt: str, texts: Iterable[str]) -> dict[str, str]:
        """The cached translations of those of `texts` that have one."""
        by_hash = {text_hash(t): t for t in texts}
        hashes = list(by_hash)
        found: dict[str, str] = {}
        for i in range(0, len(hashes), _CHUNK):
            chunk = hashes[i : i + _CHUNK]
            rows = self._db.execute(
                f"SELECT sha256, output FROM translations WHERE model=? AND src=? AND tgt=? "
                f"AND sha256 IN ({','.join('?' * len(chunk))})",
                (model, src, tgt, *chunk),
            )
            found.update((by_hash[h], out) for h, out in rows)
        return found

    def put(self, model: str, src: str, tgt: str, translations: Mapping[str, str]) -> None:
        """Store and commit `text -> translation` pairs in one transaction."""
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO translations VALUES (?, ?, ?, ?, ?)",
                [(model, src, tgt, text_hash(t), out) for t, out in translations.items()],
            )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM translations").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> TranslationCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
