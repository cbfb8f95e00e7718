"""LAReQA benchmark files (XQuAD-R, MLQA-R): SQuAD JSON with sentence splits, one file per language.

A question's relevant candidates are the sentences whose `[start, end)` span contains its first
answer's `answer_start`, in every language that has the same question id.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


class LareqaFormatError(ValueError):
    """A LAReQA file does not have the expected structure."""


@dataclass(frozen=True)
class Candidate:
    """One sentence of one paragraph: a retrieval candidate."""

    lang: str
    article: str
    paragraph: int  # index of the paragraph in the file, parallel across languages
    sentence: int  # index of the sentence in its paragraph
    text: str
    context: str  # the whole paragraph


@dataclass(frozen=True)
class Question:
    """A question and the index of its answer sentence in its language's candidate list."""

    qid: str
    lang: str
    text: str
    article: str
    answer: int


@dataclass
class LareqaLanguage:
    """The questions and candidate sentences of one language file."""

    lang: str
    questions: list[Question]
    candidates: list[Candidate]


def _field(obj: object, key: str, kind: type, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise LareqaFormatError(f"{where}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        raise LareqaFormatError(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def load_lareqa_language(path: str | os.PathLike, lang: str) -> LareqaLanguage:
    """Parse one language file; errors name the file and the JSON path of the bad element."""
    path = Path(path)
    data = path.read_bytes()
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise LareqaFormatError(f"{path}:{line}: not valid UTF-8 (byte offset {err.start}); expected UTF-8 JSON") from err
    except json.JSONDecodeError as err:
        raise LareqaFormatError(f"{path}:{err.lineno}: invalid JSON at column {err.colno}: {err.msg}") from err

    questions: list[Question] = []
    candidates: list[Candidate] = []
    paragraph_index = 0
    for a, article in enumerate(_field(raw, "data", list, str(path))):
        where_a = f"{path}: data[{a}]"
        title = _field(article, "title", str, where_a)
        for p, para in enumerate(_field(article, "paragraphs", list, where_a)):
            where_p = f"{where_a}.paragraphs[{p}]"
            context = _field(para, "context", str, where_p)
            sentences = _field(para, "sentences", list, where_p)
            breaks = _field(para, "sentence_breaks", list, where_p)
            if len(sentences) != len(breaks):
                raise LareqaFormatError(
                    f"{where_p}: {len(sentences)} sentences but {len(breaks)} sentence_breaks"
                )
            first = len(candidates)
            for s, text in enumerate(sentences):
                # Some first sentences of the es, ru, th and tr files start with a BOM.
                candidates.append(Candidate(lang, title, paragraph_index, s, str(text).lstrip("\ufeff"), context.lstrip("\ufeff")))
            for q, qa in enumerate(_field(para, "qas", list, where_p)):
                where_q = f"{where_p}.qas[{q}]"
                answers = _field(qa, "answers", list, where_q)
                if not answers:
                    raise LareqaFormatError(f"{where_q}.answers: expected at least one answer")
                start = _field(answers[0], "answer_start", int, f"{where_q}.answers[0]")
                hits = [i for i, span in enumerate(breaks) if span[0] <= start < span[1]]
                if not hits:
                    raise LareqaFormatError(
                        f"{where_q}: answer_start {start} lies in no sentence_breaks span {breaks}"
                    )
                questions.append(
                    Question(
                        qid=_field(qa, "id", str, where_q),
                        lang=lang,
                        text=_field(qa, "question", str, where_q),
                        article=title,
                        answer=first + hits[0],
                    )
                )
            paragraph_index += 1
    return LareqaLanguage(lang, questions, candidates)


CANDIDATE_TEXTS = ("sentence", "sentence_with_context")


def candidate_text(candidate: Candidate, mode: str = "sentence") -> str:
    """The text a model sees for a candidate: the sentence alone, or followed by its paragraph."""
    if mode == "sentence":
        return candidate.text
    if mode == "sentence_with_context":
        return f"{candidate.text}\n{candidate.context}"
    raise ValueError(f"candidate_text={mode!r}: expected 'sentence' or 'sentence_with_context'")
