"""LAReQA benchmarks (XQuAD-R, MLQA-R): where their files come from, parsing, and one flat pool per benchmark.

Each benchmark is SQuAD JSON with sentence splits, one file per language. A question's relevant
candidates are the sentences whose `[start, end)` span contains its first answer's `answer_start`,
in every language that has the same question id.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from hybatch.downloads import DataSourceError, resolve_files

log = logging.getLogger(__name__)
# The file names of a LAReQA folder: a language code (en, zh, pt-BR, zh_Hant), then ".json".
LANGUAGE_FILE = re.compile(r"[a-z]{2,3}([-_][A-Za-z0-9]{2,8})?")


@dataclass(frozen=True)
class LareqaSource:
    """A benchmark's `{lang}.json` files: a folder of the LAReQA repository at a fixed commit.

    `sha256` maps each file name to the sha256 of that file at `commit`; downloads and cached copies
    are checked against it.
    """

    languages: tuple[str, ...]
    commit: str
    folder: str
    cache_subdir: str
    sha256: Mapping[str, str]

    @property
    def url_template(self) -> str:
        return f"https://raw.githubusercontent.com/google-research-datasets/lareqa/{self.commit}/{self.folder}/{{name}}"


# google-research-datasets/lareqa at 9bc8c7f; the sha256 were computed from a copy of the files taken at
# that commit, whose sizes and last bytes match the repository's files.
XQUAD_R = LareqaSource(
    languages=("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"),
    commit="9bc8c7fb6dd8d01d72a05a93c2cb96882b0d299c",
    folder="xquad-r",
    cache_subdir="xquad-r",
    sha256={
        "ar.json": "c52922d3b8ac1ae03ed5ac38647ad59870dca3dda2beefe18ecdc30729acb69d",
        "de.json": "16fb0f4bf4916154b585a20c24c66074591c9718a1affe764ff4697572328949",
        "el.json": "163fd43ee785a30eb534ae2061e9eaa766a7ee4e8ffce5e4b422480c150f64b6",
        "en.json": "7b0954f39297c27a31fef610f0883337dd2907fa8699151dc922afdd0fa12ffe",
        "es.json": "f8e836b2d91009c4363e04315f7ede363eedbbb49c67dda60de6c4aa782f58de",
        "hi.json": "ea45ba8ae4513d1533b222bebdc02a90bc319c055d3aeea68584a053d2e92872",
        "ru.json": "7f4dff853538b9a5fcc28c070b8bb983a5c5d190ac747b8e005a1ada9cab18f1",
        "th.json": "c3a041864c3a9fb0b4dd91cfdf99cf36b411b3e704c58a303c97bc6dc786cfe4",
        "tr.json": "f3e8c13002bbce154a4578f535f7533cb70f3da08840e6b62735935baec7bd94",
        "vi.json": "e35926bf5cc6fc6ecbdfca49467aabeb454f08d152d7818143a906bd31dde995",
        "zh.json": "80c2cde7b9c2fb134c303cbb52f2ba396ead9eb0014aec43993543d2ba9e93ed",
    },
)

# MLQA-R (MLQA dev with sentence breaks) is gone from LAReQA's master (removed in b91469b); at 354d67d
# the repository still has it in `mlqa-r/` (its README there lists the seven files). The sha256 were
# read from the repository's objects at that commit.
MLQA_R = LareqaSource(
    languages=("ar", "de", "en", "es", "hi", "vi", "zh"),
    commit="354d67d1cd066854cdfbf5ad0e6105528976141d",
    folder="mlqa-r",
    cache_subdir="mlqa-r",
    sha256={
        "ar.json": "2132fbc03208535c0fe01f2e2c5121d06f9c2aa799af93b0a719dbc105bdf137",
        "de.json": "ce9454dc5aa6f2d85c23cd6e49cb367fbb7c4c6e62d7f71e355c6b5dae4d0886",
        "en.json": "fedd9a5cc0848dda80caf84aa36f482adaae230526a3f6e9e86926a93ef3b1e4",
        "es.json": "70ecba276b8c96a692b120693a595d076ce94ad21d4b28311538a9fcbfe0f9d7",
        "hi.json": "4dd0fb3c06f737a5481d705bc1dcac7876712a5815c9265908fbb3a0696cb654",
        "vi.json": "9d3baff6ba03e6793b25594217265ea59a136b9733833dca8a9582a84a78ff85",
        "zh.json": "57f01d2fff50cf3392805635b01445339f225ad5bf28ba8443b12f8dbd1e69dc",
    },
)

SOURCES: dict[str, LareqaSource] = {"xquad_r": XQUAD_R, "mlqa_r": MLQA_R}


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


def render_candidate(candidate: Candidate, mode: str = "sentence") -> str:
    """The text a model sees for a candidate: the sentence alone, or followed by its paragraph."""
    if mode == "sentence":
        return candidate.text
    if mode == "sentence_with_context":
        return f"{candidate.text}\n{candidate.context}"
    raise ValueError(f"candidate_text={mode!r}: expected 'sentence' or 'sentence_with_context'")


@dataclass
class LareqaBenchmark:
    """Questions and candidates of all languages in one flat pool, candidates grouped by language.

    `relevance[i]` lists the pool indices of question i's answer sentence in every language that
    has a question with the same id (its own language included).
    """

    name: str
    languages: tuple[str, ...]
    questions: list[Question]
    candidates: list[Candidate]
    candidate_texts: list[str]
    relevance: list[tuple[int, ...]]
    question_lang: Tensor = field(repr=False)  # (Q,) index into languages
    candidate_lang: Tensor = field(repr=False)  # (N,) index into languages, non-decreasing

    def __str__(self) -> str:
        return (
            f"{self.name}: {len(self.languages)} languages ({', '.join(self.languages)}), "
            f"{len(self.questions)} questions, {len(self.candidates)} candidates"
        )


def _check_benchmark_input(
    name: str, data: Mapping[str, LareqaLanguage], articles: set[str] | None, candidate_text: str
) -> None:
    if candidate_text not in CANDIDATE_TEXTS:
        raise ValueError(f"candidate_text={candidate_text!r}: expected one of {CANDIDATE_TEXTS}")
    if not data:
        raise ValueError(f"{name}: no languages given")
    for lang, part in data.items():
        if part.lang != lang:
            raise ValueError(f"{name}: data[{lang!r}] holds language {part.lang!r}")
    if articles is not None:
        known = {c.article for part in data.values() for c in part.candidates}
        if not known & set(articles):
            raise ValueError(
                f"{name}: none of the {len(articles)} requested articles exists (e.g. {sorted(articles)[:3]}); "
                f"the files have e.g. {sorted(known)[:3]}"
            )


def build_lareqa_benchmark(
    name: str,
    data: Mapping[str, LareqaLanguage],
    articles: set[str] | None = None,
    candidate_text: str = "sentence",
) -> LareqaBenchmark:
    """Flatten parsed language files (in `data`'s order) into one benchmark.

    `articles` keeps only the questions and candidates of those articles (titles are shared across
    languages), e.g. the held-out part of an article-level train/val/test split.
    """
    _check_benchmark_input(name, data, articles, candidate_text)
    candidates: list[Candidate] = []
    questions: list[Question] = []
    answer_of: list[int] = []  # pool index of each kept question's own answer
    for lang, part in data.items():
        remap: dict[int, int] = {}
        for i, cand in enumerate(part.candidates):
            if articles is None or cand.article in articles:
                remap[i] = len(candidates)
                candidates.append(cand)
        kept = [q for q in part.questions if articles is None or q.article in articles]
        if not kept:
            raise ValueError(f"{name}: language {lang!r} has no question" + (" in the selected articles" if articles else ""))
        for q in kept:
            if q.answer not in remap:
                raise ValueError(f"{name}: question {q.qid} ({lang}) of article {q.article!r} has its answer in another article")
            questions.append(q)
            answer_of.append(remap[q.answer])

    answers_by_qid: dict[str, list[int]] = {}
    for q, answer in zip(questions, answer_of, strict=True):
        answers_by_qid.setdefault(q.qid, []).append(answer)
    languages = tuple(data)
    lang_index = {lang: i for i, lang in enumerate(languages)}
    return LareqaBenchmark(
        name=name,
        languages=languages,
        questions=questions,
        candidates=candidates,
        candidate_texts=[render_candidate(c, candidate_text) for c in candidates],
        relevance=[tuple(dict.fromkeys(answers_by_qid[q.qid])) for q in questions],
        question_lang=torch.tensor([lang_index[q.lang] for q in questions], dtype=torch.int64),
        candidate_lang=torch.tensor([lang_index[c.lang] for c in candidates], dtype=torch.int64),
    )


def lareqa_files(
    name: str,
    languages: Sequence[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    url_template: str | None = None,
    cache_subdir: str | None = None,
    data_dir_key: str = "data_dir",
) -> dict[str, Path]:
    """`{lang: path}` of a benchmark's language files: from `data_dir`, else the cache (downloaded once);
    errors name `data_dir_key`, the override that sets `data_dir`.

    A known benchmark (`SOURCES`) downloads from its pinned commit and verifies each file's sha256
    (a `data_dir` is read as it is, in whatever languages it has files for);
    another `url_template` (with `{name}` for the file name) downloads unverified. Other names need
    `languages` and `data_dir` or `url_template`.
    """
    source = SOURCES.get(name)
    if languages is None and data_dir is not None and Path(data_dir).expanduser().is_dir():
        # A local folder in the format: its languages are its `<lang>.json` files, whatever they are.
        languages = sorted(p.stem for p in Path(data_dir).expanduser().glob("*.json") if LANGUAGE_FILE.fullmatch(p.stem))
        if not languages:
            raise DataSourceError(f"{data_dir_key}={data_dir}: no <language>.json file of the LAReQA format (e.g. en.json)")
    if source is None and (languages is None or (url_template is None and data_dir is None)):
        raise ValueError(f"unknown LAReQA benchmark {name!r} (known: {sorted(SOURCES)}); give languages and data_dir or url_template")
    languages = list(source.languages if languages is None else languages)
    if source is not None and data_dir is None:  # a local folder may hold any languages of the format
        unknown = [lang for lang in languages if lang not in source.languages]
        if unknown:
            raise ValueError(f"{name} has no language {unknown}; it has {list(source.languages)}")
    if len(set(languages)) != len(languages) or not languages:
        raise ValueError(f"{name}: languages {languages} must be non-empty and distinct")
    pinned = source is not None and url_template in (None, source.url_template)
    files = resolve_files(
        [f"{lang}.json" for lang in languages],
        data_dir,
        url_template or (source.url_template if source else None),
        cache_dir,
        cache_subdir or (source.cache_subdir if source else name),
        sha256=source.sha256 if pinned else None,
        data_dir_key=data_dir_key,
    )
    return {lang: files[f"{lang}.json"] for lang in languages}


def load_lareqa_benchmark(
    name: str,
    languages: Sequence[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    url_template: str | None = None,
    cache_subdir: str | None = None,
    candidate_text: str = "sentence",
    articles: set[str] | None = None,
    data_dir_key: str = "data_dir",
) -> LareqaBenchmark:
    """XQuAD-R (`name="xquad_r"`) or MLQA-R (`"mlqa_r"`), or another LAReQA-format benchmark: files as `lareqa_files`."""
    files = lareqa_files(
        name, languages, data_dir, cache_dir, url_template=url_template, cache_subdir=cache_subdir, data_dir_key=data_dir_key
    )
    data = {lang: load_lareqa_language(path, lang) for lang, path in files.items()}
    bench = build_lareqa_benchmark(name, data, articles, candidate_text)
    log.info("%s", bench)
    return bench
