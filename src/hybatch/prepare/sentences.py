"""Split passages into sentences for translation, and join translated sentences back.

MT models are trained on sentences: a whole passage in one input gets truncated or drops
sentences, so passages are translated sentence by sentence and rejoined.

A regular expression, not a library: every paper dataset is translated from English, where the
only hard part is abbreviations ("Mr. Smith", "U.S. Army"), handled by a list below; the same
expression also ends sentences at the CJK full stops (。！？, no space after them), the Devanagari
danda (। ॥) and the Arabic question mark (؟), so already-translated text splits too. Thai writes
no sentence-final punctuation, so no punctuation-based splitter (regular expression or library)
can split it; Thai text stays one unit.
"""

from __future__ import annotations

import re

# Words that end with a full stop without ending a sentence (compared case-insensitively).
ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ft", "vs", "etc", "e.g", "i.e", "cf", "al",
    "inc", "ltd", "co", "corp", "no", "nos", "vol", "pp", "fig", "jan", "feb", "mar", "apr", "jun", "jul",
    "aug", "sep", "sept", "oct", "nov", "dec", "gen", "col", "lt", "sgt", "capt", "gov", "sen", "rep",
    "rev", "u.s", "u.k", "u.n", "a.m", "p.m", "approx", "est", "dept", "univ",
})  # fmt: skip
# A Latin-script sentence ends at . ! ? (optionally followed by closing quotes / brackets) and whitespace.
_LATIN_END = re.compile(r"""([.!?…]+["'”’»)\]]*)(\s+)""")
# CJK, Devanagari and Arabic terminators end a sentence with or without whitespace after them.
_OTHER_END = re.compile(r"""[。！？｡।॥؟]+["'”’»」』）)\]]*""")
# Languages written without spaces between sentences.
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "yue"})


def _is_abbreviation(text: str, end: int) -> bool:
    """Whether the full stop at `text[end - 1]` closes an abbreviation or an initial ("J. Smith")."""
    start = end - 1
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    word = text[start : end - 1].strip("\"'(“‘[").casefold()
    return word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, stripped; a text without a sentence end is one sentence.

    `join_sentences(split_sentences(text), "en")` is `text` with the whitespace between sentences
    made one space."""
    cuts: set[int] = set()
    for match in _LATIN_END.finditer(text):
        end = match.end(1)
        if match.group(1).startswith(".") and len(match.group(1)) == 1 and _is_abbreviation(text, end):
            continue
        nxt = text[match.end() : match.end() + 1]
        if nxt and (nxt.islower() or nxt in ",;:"):  # "approx. five", "... and so on"
            continue
        cuts.add(end)
    cuts.update(match.end() for match in _OTHER_END.finditer(text))
    sentences, start = [], 0
    for cut in sorted(cuts):
        piece = text[start:cut].strip()
        if piece:
            sentences.append(piece)
        start = cut
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def join_sentences(sentences: list[str], language: str) -> str:
    """Sentences of one passage, in `language`'s spacing: none for Chinese / Japanese, else a space."""
    sep = "" if language in NO_SPACE_LANGUAGES else " "
    return sep.join(s.strip() for s in sentences if s.strip())
