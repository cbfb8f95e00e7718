"""LASER's Tatoeba v1 test sets (github.com/facebookresearch/LASER, data/tatoeba/v1).

A directory of `tatoeba.<xxx>-eng.<xxx>` and `tatoeba.<xxx>-eng.eng` files: up to 1,000 line-aligned
sentence pairs per language, `<xxx>` an ISO 639-3 code as LASER spells it (deu, swh, cmn, ...).
An evaluation set (bitext mining), never training data.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

_FILE = re.compile(r"^tatoeba\.([a-z]{3})-eng\.([a-z]{3})$")


def tatoeba_files(data_dir: str | Path, language: str) -> tuple[Path, Path]:
    """The (`<xxx>` side, English side) files of one language."""
    root = Path(data_dir)
    return root / f"tatoeba.{language}-eng.{language}", root / f"tatoeba.{language}-eng.eng"


def read_lines(path: Path) -> list[str]:
    """One sentence per line; only "\\n" separates lines (a U+2028 inside a sentence stays in it)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def tatoeba_languages(data_dir: str | Path) -> list[str]:
    """Every `<xxx>` with at least one file in `data_dir`, sorted."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Tatoeba data_dir {root} is not a directory (expected tatoeba.<xxx>-eng.<xxx> files)")
    found = {m.group(1) for p in root.iterdir() if (m := _FILE.match(p.name)) and m.group(2) in (m.group(1), "eng")}
    return sorted(found)


def read_tatoeba(
    data_dir: str | Path, languages: list[str] | None = None, max_sentences: int | None = None
) -> tuple[dict[str, tuple[list[str], list[str]]], list[str]]:
    """`{xxx: (xxx sentences, English sentences)}` and the languages whose files are missing.

    `languages=None` reads every language found. A language with one file of its pair missing is
    reported as missing, not read; a pair whose files differ in line count is an error.
    `max_sentences` keeps the first N pairs (quick runs).
    """
    root = Path(data_dir)
    wanted = tatoeba_languages(root) if languages is None else list(languages)
    pairs: dict[str, tuple[list[str], list[str]]] = {}
    missing: list[str] = []
    for language in wanted:
        source, english = tatoeba_files(root, language)
        absent = [p.name for p in (source, english) if not p.is_file()]
        if absent:
            log.warning("Tatoeba %s: %s missing in %s; skipping it", language, " and ".join(absent), root)
            missing.append(language)
            continue
        xxx, eng = read_lines(source), read_lines(english)
        if len(xxx) != len(eng):
            raise ValueError(f"{source} has {len(xxx)} lines but {english} has {len(eng)}: the files must be line-aligned")
        if not xxx:
            raise ValueError(f"{source} is empty")
        pairs[language] = (xxx[:max_sentences], eng[:max_sentences])
    return pairs, missing
