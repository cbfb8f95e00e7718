"""NTREX-128 (Federmann et al. 2022): WMT19 news sentences translated from English into 128 languages.

Layout of the official repository's NTREX-128/ folder: `newstest2019-src.eng.txt` (English source)
and `newstest2019-ref.<code>.txt`, 1,997 line-aligned sentences each; `<code>` is ISO 639-3 with an
optional script / region suffix (`zho-CN`, `tgk-Cyrl`). An evaluation set only (bitext mining):
never train on it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from hybatch.data.tatoeba import read_lines

log = logging.getLogger(__name__)

ENGLISH = "eng"
SOURCE_FILE = "newstest2019-src.eng.txt"
_REFERENCE = re.compile(r"^newstest2019-ref\.(.+)\.txt$")

# The 25 low-resource languages of the subset in ../shared/data/ntrex-128 (its SOURCE.md).
LOW_RESOURCE_LANGUAGES = (
    "amh", "hau", "ibo", "yor", "swa", "som", "zul", "xho", "kin", "nya", "mlg", "nep", "sin",
    "khm", "lao", "mya", "pus", "kaz", "kir", "uzb", "tgk-Cyrl", "mon", "tir", "orm", "wol",
)  # fmt: skip
# XQuAD-R / training-data language codes (ISO 639-1) -> NTREX file codes.
FROM_ISO639_1 = {
    "ar": "arb", "de": "deu", "el": "ell", "en": "eng", "es": "spa", "hi": "hin",
    "ru": "rus", "th": "tha", "tr": "tur", "vi": "vie", "zh": "zho-CN",
}  # fmt: skip


def ntrex_file(data_dir: str | Path, code: str) -> Path:
    name = SOURCE_FILE if code == ENGLISH else f"newstest2019-ref.{code}.txt"
    return Path(data_dir) / name


def ntrex_languages(data_dir: str | Path) -> list[str]:
    """The reference languages (not English) with a file in `data_dir`, sorted."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"NTREX data_dir {root} is not a directory (expected {SOURCE_FILE} and newstest2019-ref.<code>.txt)")
    return sorted(m.group(1) for p in root.iterdir() if (m := _REFERENCE.match(p.name)))


def read_ntrex(
    data_dir: str | Path, languages: list[str] | None = None, max_sentences: int | None = None
) -> tuple[dict[str, list[str]], list[str]]:
    """`{code: sentences}` for English and each requested language, and the requested codes with no file.

    `languages=None` reads every language found. All files must have the English source's line
    count. `max_sentences` keeps the first N lines (quick runs).
    """
    root = Path(data_dir)
    source = ntrex_file(root, ENGLISH)
    if not source.is_file():
        raise FileNotFoundError(f"NTREX: {source} is missing (the English source every pair is aligned to)")
    wanted = ntrex_languages(root) if languages is None else [c for c in languages if c != ENGLISH]
    english = read_lines(source)
    sentences = {ENGLISH: english[:max_sentences]}
    missing: list[str] = []
    for code in wanted:
        path = ntrex_file(root, code)
        if not path.is_file():
            log.warning("NTREX %s: %s missing; skipping it", code, path)
            missing.append(code)
            continue
        lines = read_lines(path)
        if len(lines) != len(english):
            raise ValueError(f"{path} has {len(lines)} lines but {source} has {len(english)}: NTREX files must be line-aligned")
        sentences[code] = lines[:max_sentences]
    return sentences, missing
