"""The dataset card written beside every prepared file: `<out_dir>/<dataset>.card.json`.

What anyone needs to trust or reproduce the file: the source and its revision and license, the
translation model and its settings, the languages, the counts before and after every step, the
benchmarks the contamination guard checked and those it could not obtain, the
time it took, and the package versions and git commit that made it.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from hybatch.atomic import atomic_write_text
from hybatch.run_outputs import git_commit, package_versions

CARD_VERSION = 1


def card_path(jsonl_path: Path) -> Path:
    """`x/nq.jsonl` -> `x/nq.card.json` (a shard `nq.shard-00000-of-00004.jsonl` keeps its shard tag)."""
    return jsonl_path.with_name(jsonl_path.name.removesuffix(".jsonl") + ".card.json")


def build_card(
    *,
    dataset: str,
    output: Path,
    source: dict[str, Any],
    translation: dict[str, Any] | None,
    source_language: str,
    languages: list[str],
    shard: int,
    num_shards: int,
    counts: dict[str, Any],
    hygiene: dict[str, Any] | None,
    translation_stats: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    return {
        "card_version": CARD_VERSION,
        "dataset": dataset,
        "file": output.name,
        "source": source,
        "translation": translation,
        "source_language": source_language,
        "languages": languages,
        "shard": shard,
        "num_shards": num_shards,
        "counts": counts,
        "hygiene": hygiene,
        "translation_stats": translation_stats,
        "seconds": round(seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "packages": package_versions(),
        "git": git_commit(Path(__file__).resolve().parent),
        "platform": platform.platform(),
    }


def write_card(path: Path, card: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(card, indent=2, ensure_ascii=False) + "\n")
