"""Quality filters for machine translations, each counted: what is dropped is never silent.

* `empty`: nothing came out;
* `untranslated`: the output is the source text although the target language is written in
  another script (the model copied its input);
* `length_ratio`: output / source length, divided by the language's usual ratio to English,
  outside [1/max_factor, max_factor] (truncated or run-away outputs);
* `repetition`: a word (characters in scripts without spaces) or n-gram repeated many times in a
  row, more than in the source (the typical hallucination loop).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

# The script a language is written in: an identical output in another script was not translated.
SCRIPTS = {
    "ar": "Arab", "fa": "Arab", "zh": "Hani", "ja": "Jpan", "ko": "Hang", "th": "Thai", "hi": "Deva",
    "ru": "Cyrl", "el": "Grek",
}  # fmt: skip
# Rough characters-per-English-character of translations (Chinese / Japanese need about a third as
# many characters); priors for the length filter, whose tolerance (max_factor) is wide.
CHAR_RATIO_TO_ENGLISH = {"zh": 0.3, "ja": 0.4, "ko": 0.45}
# Written without spaces between words: repetition is counted in characters.
UNSPACED = frozenset({"zh", "ja", "th"})
REASONS = ("empty", "untranslated", "length_ratio", "repetition")


def script(lang: str) -> str:
    return SCRIPTS.get(lang, "Latn")


def max_run(units: list[str], max_n: int) -> int:
    """The most consecutive repeats of any n-gram (n <= max_n) of `units`."""
    best = 1 if units else 0
    for n in range(1, max_n + 1):
        for start in range(n):  # every alignment of the n-gram grid
            run, prev = 0, None
            for i in range(start, len(units) - n + 1, n):
                gram = tuple(units[i : i + n])
                run = run + 1 if gram == prev else 1
                prev = gram
                best = max(best, run)
    return best


def repetition_units(text: str, lang: str) -> list[str]:
    return [c for c in text if not c.isspace()] if lang in UNSPACED else text.split()


class TranslationFilter:
    """Checks (source, output) pairs and counts the reasons outputs are rejected, per target language."""

    def __init__(
        self,
        min_length_for_ratio: int = 20,
        max_factor: float = 3.0,
        char_ratio: Mapping[str, float] | None = None,
        max_repeats: int = 4,
        max_ngram: int = 4,
        enabled: tuple[str, ...] | list[str] = REASONS,
    ) -> None:
        unknown = set(enabled) - set(REASONS)
        if unknown:
            raise ValueError(f"filters.enabled has {sorted(unknown)}; known filters: {list(REASONS)}")
        if max_factor < 1:
            raise ValueError(f"filters.max_factor={max_factor}: expected >= 1")
        self.min_length_for_ratio = min_length_for_ratio
        self.max_factor = max_factor
        self.char_ratio = {**CHAR_RATIO_TO_ENGLISH, **(char_ratio or {})}
        self.max_repeats = max_repeats
        self.max_ngram = max_ngram
        self.enabled = tuple(enabled)
        self.counts: Counter[str] = Counter()  # "<lang>/<reason>" -> rejected outputs

    def reason(self, source: str, output: str, src: str, tgt: str) -> str | None:
        """Why `output` is not a usable translation of `source`, or None."""
        on = self.enabled
        if "empty" in on and not output.strip():
            return "empty"
        if "untranslated" in on and script(src) != script(tgt) and output.strip() == source.strip():
            return "untranslated"
        if "length_ratio" in on and len(source) >= self.min_length_for_ratio:
            expected = self.char_ratio.get(tgt, 1.0) / self.char_ratio.get(src, 1.0)
            ratio = len(output) / len(source) / expected
            if not 1 / self.max_factor <= ratio <= self.max_factor:
                return "length_ratio"
        if "repetition" in on:
            run = max_run(repetition_units(output, tgt), self.max_ngram)
            if run >= self.max_repeats and run > max_run(repetition_units(source, src), self.max_ngram):
                return "repetition"
        return None

    def check(self, source: str, output: str, src: str, tgt: str, field: str) -> bool:
        """True when `output` passes; a rejection is counted under `<tgt>/<field>/<reason>`."""
        why = self.reason(source, output, src, tgt)
        if why is not None:
            self.counts[f"{tgt}/{field}/{why}"] += 1
        return why is None
