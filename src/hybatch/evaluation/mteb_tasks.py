"""MTEB tasks through the `mteb` library: `python evaluate.py benchmark=mteb "benchmark.tasks=[...]"`.

`DualEncoderForMteb` gives mteb's encoder protocol to our encoder. Prompts follow E5: mteb asks for a
query or a document encoding in retrieval-like tasks (query / passage prefix); symmetric tasks (bitext
mining, STS, classification, clustering, ...) pass no prompt type and get `symmetric_role`, the query
prefix by default, as the E5 model card prescribes ("use 'query: ' for symmetric tasks"). mteb 2.26's
own E5 entry (model_implementations/e5_models.py: prompts only for the query / document types) encodes
those tasks without a prefix, and `symmetric_role: none` does the same; which of the two a published
leaderboard number used depends on the mteb version that produced it, so compare with care.

`NTREXBitextMining` and `Tatoeba` can read local files (`hybatch.data.ntrex`, `hybatch.data.tatoeba`)
into mteb's own task objects, so mteb's evaluator and subset names (`deu_Latn-eng_Latn`, `deu-eng`)
give scores comparable with published MTEB results; every other task loads from the hub.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import statistics
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import mteb
import numpy as np
import yaml
from datasets import Dataset, DatasetDict
from mteb import AbsTask, TaskMetadata
from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ScoringFunction
from mteb.types import PromptType
from torch.utils.data import DataLoader

from hybatch.data.ntrex import ENGLISH, ntrex_languages, read_ntrex
from hybatch.data.tatoeba import read_tatoeba, tatoeba_languages
from hybatch.encoder import Role
from hybatch.retrieval.index import TextEncoder

log = logging.getLogger(__name__)

SymmetricRole = Literal["query", "passage", "none"]
SYMMETRIC_ROLES = ("query", "passage", "none")
PAIRS = ("english", "all")
NTREX = "NTREXBitextMining"
TATOEBA = "Tatoeba"
# NTREX file codes whose mteb column is not "<code>_<the only script mteb lists for it>".
_NTREX_COLUMNS = {"zho-CN": "zho_Hans", "zho-TW": "zho_Hant", ENGLISH: "eng_Latn"}
_NON_SCORES = {"hf_subset", "languages", "mteb_version", "main_score"}


def model_identity(encoder: TextEncoder) -> tuple[str, str | None]:
    """(name, revision) for mteb's results, so that two models never share a result folder.

    Weights from a training checkpoint (`ckpt_path=`) are `local/<run dir>-<checkpoint>` at the
    checkpoint file's hash. A hub id keeps its id (revision unknown here: None, mteb's "no revision"). A local folder is
    named by its model card (`model-index` name of `<folder>/README.md`, as the Hub would show it) or
    `local/<folder>` (a run's `model/` folder: `local/<run dir>`), and its revision is the first 12
    hex digits of the sha256 of its weight files: the same weights, the same revision.
    """
    checkpoint = getattr(encoder, "weights_path", None)
    if checkpoint:  # `ckpt_path=`: the run the checkpoint belongs to, and the checkpoint's bytes
        path = Path(checkpoint).resolve()
        label = path.parent.parent.name if path.parent.name == "checkpoints" else path.stem
        return "local/" + re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{label}-{path.stem}"), _sha256_prefix([path])
    name = getattr(encoder, "name_or_path", None)
    if not name:
        return "hybatch/encoder", None
    folder = Path(name)
    if not folder.exists():
        return str(name), None
    folder = folder.resolve()
    label = folder.parent.name if folder.name == "model" and (folder.parent / "metrics.json").exists() else folder.name
    card_name = _card_model_name(folder / "README.md")
    weights = sorted([*folder.rglob("*.safetensors"), *folder.rglob("*.bin")])
    return card_name or "local/" + re.sub(r"[^A-Za-z0-9_.-]+", "_", label), _sha256_prefix(weights)


def _sha256_prefix(paths: Sequence[Path]) -> str | None:
    """12 hex digits of the sha256 over the files' bytes: the same weights, the same revision."""
    if not paths:
        return None
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def _card_model_name(card: Path) -> str | None:
    """The `model-index` name in a model card's front matter, when it is an `owner/name` id."""
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8")
    if not text.startswith("---\n") or "\n---" not in text[4:]:
        return None
    try:
        front = yaml.safe_load(text[4:].split("\n---", 1)[0]) or {}
    except yaml.YAMLError:
        return None
    index = front.get("model-index") if isinstance(front, dict) else None
    name = index[0].get("name") if isinstance(index, list) and index and isinstance(index[0], dict) else None
    return name if isinstance(name, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", name) else None


class DualEncoderForMteb(AbsEncoder):
    """Our encoder (`encode(texts, role)`) behind mteb's encoder protocol.

    `symmetric_role`: the role (query | passage prefix) for tasks without a query / document side,
    or `none` for no prefix. `max_length`: tokens per text for every role (null: the encoder's own
    per-role lengths).
    """

    def __init__(self, encoder: TextEncoder, symmetric_role: SymmetricRole = "query", max_length: int | None = None) -> None:
        if symmetric_role not in SYMMETRIC_ROLES:
            raise ValueError(f"symmetric_role={symmetric_role!r}: expected one of {SYMMETRIC_ROLES}")
        if max_length is not None and not hasattr(encoder, "query_max_length"):
            raise ValueError(f"max_length={max_length}: {type(encoder).__name__} has no per-role max length to override")
        self.model = encoder
        self.symmetric_role = symmetric_role
        self.max_length = max_length
        name, revision = model_identity(encoder)
        self.mteb_model_meta = ModelMeta.create_empty(
            {
                "name": name,
                "revision": revision,
                "similarity_fn_name": ScoringFunction.COSINE,
                "embed_dim": getattr(encoder, "dim", None),
                "max_tokens": max_length,
                "framework": ["PyTorch"],
            }
        )

    def role(self, prompt_type: PromptType | None) -> tuple[Role, bool]:
        """(encoder role, keep its prefix) for mteb's prompt type."""
        if prompt_type == PromptType.document:
            return "passage", True
        if prompt_type == PromptType.query:
            return "query", True
        if self.symmetric_role == "none":
            return "query", False
        return self.symmetric_role, True

    @contextmanager
    def _encoding_settings(self, keep_prefix: bool) -> Iterator[None]:
        """Temporarily lift the per-role max lengths and drop the prefixes on the encoder."""
        names = []
        if self.max_length is not None:
            names += ["query_max_length", "passage_max_length"]
        if not keep_prefix:
            names += ["query_prefix", "passage_prefix"]
        saved = {n: getattr(self.model, n) for n in names}
        try:
            for n in names:
                setattr(self.model, n, self.max_length if n.endswith("max_length") else "")
            yield
        finally:
            for n, v in saved.items():
                setattr(self.model, n, v)

    def encode(
        self,
        inputs: DataLoader,
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        role, keep_prefix = self.role(prompt_type)
        with self._encoding_settings(keep_prefix):
            embeddings = self.model.encode(
                texts, role, batch_size=kwargs.get("batch_size", 32), progress=kwargs.get("show_progress_bar", True)
            )
        return embeddings.float().numpy()


def _ntrex_column(code: str, columns: set[str]) -> str | None:
    """mteb's column (`deu_Latn`) for an NTREX file code (`deu`, `tgk-Cyrl`), None if mteb has none.

    mteb's script tags are its own labels (it calls NTREX's Cyrillic Mongolian `mon_Mong` and its
    Latin Oromo `orm_Ethi`); the names, not the tags, are what results are compared by.
    """
    if code in _NTREX_COLUMNS:
        return _NTREX_COLUMNS[code]
    if code in columns:
        return code
    base = code.split("-")[0]
    matches = [c for c in columns if c.split("_")[0] == base]
    return matches[0] if len(matches) == 1 else None


def _ntrex_subsets(task: AbsTask, columns: Sequence[str], pairs: str) -> list[str]:
    """mteb's NTREX subsets over `columns`: with English both ways, or every pair mteb defines."""
    chosen = set(columns) | {"eng_Latn"}
    defined = task.metadata.hf_subsets
    if pairs == "english":
        wanted = {s for c in columns for s in (f"{c}-eng_Latn", f"eng_Latn-{c}")}
        return [s for s in defined if s in wanted]
    return [s for s in defined if set(s.split("-")) <= chosen]


def _select_ntrex(task: AbsTask, languages: Sequence[str] | None, available: Sequence[str] | None, pairs: str) -> tuple[dict[str, str], list[str]]:
    """`{NTREX code: mteb column}` to evaluate and the requested codes that are not `available`.

    `available`: the file codes of a local directory (None: the hub, which has all of them).
    """
    columns = {c for s in task.metadata.hf_subsets for c in s.split("-")}
    if languages is None:
        if available is None:
            return {c: c for c in sorted(columns - {"eng_Latn"})}, []
        codes = [c for c in available if _ntrex_column(c, columns)]
        skipped = sorted(set(available) - set(codes))
        if skipped:
            log.warning("NTREX: %d languages have files but no mteb column, skipped: %s", len(skipped), skipped)
        return {c: _ntrex_column(c, columns) for c in codes}, []
    selected: dict[str, str] = {}
    missing: list[str] = []
    by_column = {_ntrex_column(c, columns): c for c in (available or [])}
    for code in languages:
        if code in (ENGLISH, "eng_Latn"):
            continue
        column = _ntrex_column(code, columns)
        if column is None:
            raise ValueError(
                f"benchmark.languages: {code!r} is not a language of mteb's {NTREX} "
                f"(NTREX file codes such as deu, zho-CN, or mteb columns such as deu_Latn)"
            )
        if available is None:
            selected[column] = column
        elif code in available:
            selected[code] = column
        elif column in by_column:
            selected[by_column[column]] = column
        else:
            missing.append(code)
    return selected, missing


def load_ntrex_into(task: AbsTask, data_dir: str | Path, languages: Sequence[str] | None, max_sentences: int | None, pairs: str) -> list[str]:
    """Put local NTREX files into mteb's NTREX task (one parallel table, a column per language);
    returns the requested languages whose files are missing."""
    selected, missing = _select_ntrex(task, languages, ntrex_languages(data_dir), pairs)
    sentences, absent = read_ntrex(data_dir, list(selected), max_sentences)
    missing += absent
    selected = {code: column for code, column in selected.items() if code in sentences}
    if not selected:
        raise FileNotFoundError(f"NTREX: none of the requested languages {list(languages or [])} has a file in {data_dir}")
    table = {"eng_Latn": sentences[ENGLISH], **{column: sentences[code] for code, column in selected.items()}}
    task.dataset = DatasetDict({task.metadata.eval_splits[0]: Dataset.from_dict(table)})
    task.hf_subsets = _ntrex_subsets(task, list(selected.values()), pairs)
    task.data_loaded = True
    log.info("NTREX from %s: %d languages, %d sentences each, %d subsets", data_dir, len(selected), len(sentences[ENGLISH]), len(task.hf_subsets))
    return missing


def _tatoeba_language(code: str) -> str:
    return code.removesuffix("-eng")


def load_tatoeba_into(task: AbsTask, data_dir: str | Path, languages: Sequence[str] | None, max_sentences: int | None, pairs: str) -> list[str]:
    """Put LASER Tatoeba v1 files into mteb's Tatoeba task (subset `<xxx>-eng`: sentence1 the `<xxx>`
    side, searched among the English side, as mteb's hub copy has it); returns the missing languages."""
    del pairs  # Tatoeba has only <xxx> -> English
    defined = {_tatoeba_language(s): s for s in task.metadata.hf_subsets}
    if languages is None:
        found = tatoeba_languages(data_dir)
        wanted = [c for c in found if c in defined]
        if len(wanted) < len(found):
            log.warning("Tatoeba: %d languages in %s are not mteb subsets, skipped: %s", len(found) - len(wanted), data_dir, sorted(set(found) - set(wanted)))
    else:
        wanted = [_tatoeba_language(c) for c in languages if _tatoeba_language(c) != ENGLISH]
        unknown = [c for c in wanted if c not in defined]
        if unknown:
            raise ValueError(f"benchmark.languages: {unknown} are not languages of mteb's {TATOEBA} (its codes: {sorted(defined)})")
    sentence_pairs, missing = read_tatoeba(data_dir, wanted, max_sentences)
    if not sentence_pairs:
        raise FileNotFoundError(f"Tatoeba: none of {wanted} has both files in {data_dir}")
    split = task.metadata.eval_splits[0]
    task.dataset = {
        defined[code]: DatasetDict({split: Dataset.from_dict({"sentence1": xxx, "sentence2": eng})})
        for code, (xxx, eng) in sentence_pairs.items()
    }
    task.hf_subsets = [defined[code] for code in sentence_pairs]
    task.data_loaded = True
    log.info("Tatoeba from %s: %d languages", data_dir, len(sentence_pairs))
    return missing


LOCAL_LOADERS: dict[str, Callable[..., list[str]]] = {NTREX: load_ntrex_into, TATOEBA: load_tatoeba_into}


def task_metrics(result: Any, main_score: str) -> dict[str, float]:
    """`<subset>/<metric>` for every scalar score of an mteb `TaskResult`, plus `mean/<main_score>`.

    A task with several evaluation splits gets `<subset>.<split>` labels.
    """
    metrics: dict[str, float] = {}
    mains: list[float] = []
    several_splits = len(result.scores) > 1
    for split, entries in result.scores.items():
        for entry in entries:
            label = f"{entry['hf_subset']}.{split}" if several_splits else entry["hf_subset"]
            for key, value in entry.items():
                if key not in _NON_SCORES and isinstance(value, int | float) and not isinstance(value, bool):
                    metrics[f"{label}/{key}"] = float(value)
            mains.append(float(entry["main_score"]))
    metrics[f"mean/{main_score}"] = statistics.fmean(mains) if mains else math.nan
    return metrics


class MtebBenchmark:
    """mteb tasks as one benchmark of `evaluate.py` (the runner's `BenchmarkTask`).

    `tasks`: mteb task names. `data_dir`: local data for the one task in `tasks` that can read it
    (NTREXBitextMining or Tatoeba); `task_data_dirs`: `{task name: directory}` for several.
    `languages`: ISO 639-3 codes (NTREX file codes such as zho-CN, Tatoeba's LASER codes such as swh,
    or mteb's own names) limiting the subsets; null: all. `pairs` (NTREX): `english` (every language
    to and from English) or `all` (every pair mteb defines among the languages). `max_sentences`: the
    first N sentences of each local file (quick runs; not comparable with published scores).
    """

    def __init__(
        self,
        name: str = "mteb",
        tasks: Sequence[str] = (),
        languages: Sequence[str] | None = None,
        data_dir: str | None = None,
        task_data_dirs: dict[str, str] | None = None,
        pairs: str = "english",
        max_sentences: int | None = None,
        symmetric_role: SymmetricRole = "query",
        max_length: int | None = None,
    ) -> None:
        if isinstance(tasks, str):
            tasks = [tasks]
        if not tasks:
            raise ValueError('benchmark.tasks is empty: name the mteb tasks, e.g. "benchmark.tasks=[Tatoeba]"')
        if pairs not in PAIRS:
            raise ValueError(f"benchmark.benchmarks.{name}.pairs={pairs!r}: expected one of {PAIRS}")
        if symmetric_role not in SYMMETRIC_ROLES:
            raise ValueError(f"benchmark.benchmarks.{name}.symmetric_role={symmetric_role!r}: expected one of {SYMMETRIC_ROLES}")
        data_dirs = dict(task_data_dirs or {})
        unknown = sorted(set(data_dirs) - set(LOCAL_LOADERS))
        if unknown:
            raise ValueError(f"benchmark.benchmarks.{name}.task_data_dirs: {unknown} cannot read local data; only {sorted(LOCAL_LOADERS)} can")
        if data_dir is not None:
            local = [t for t in tasks if t in LOCAL_LOADERS]
            if len(local) != 1:
                raise ValueError(
                    f"benchmark.data_dir={data_dir} needs exactly one of {sorted(LOCAL_LOADERS)} in benchmark.tasks "
                    f"(got {list(tasks)}); for several, set benchmark.benchmarks.{name}.task_data_dirs.<task>=<dir>"
                )
            data_dirs[local[0]] = data_dir
        self.name = name
        self.task_names = list(tasks)
        self.languages = list(languages) if languages is not None else []
        self._language_filter = list(languages) if languages is not None else None
        self.data_dirs = data_dirs
        self.pairs = pairs
        self.max_sentences = max_sentences
        self.symmetric_role = symmetric_role
        self.max_length = max_length
        self.tasks: list[AbsTask] = []
        self.missing: dict[str, list[str]] = {}

    def prepare(self) -> None:
        """Resolve task names and read local data (hub tasks load their data when evaluated)."""
        self.tasks = []
        for task_name in self.task_names:
            try:
                task = mteb.get_task(task_name)
            except KeyError as err:
                raise ValueError(f"benchmark.tasks: {err.args[0]}") from None
            if task_name in self.data_dirs:
                missing = LOCAL_LOADERS[task_name](task, self.data_dirs[task_name], self._language_filter, self.max_sentences, self.pairs)
                if missing:
                    log.warning("%s: no files for %d requested languages, evaluating the rest: %s", task_name, len(missing), missing)
                    self.missing[task_name] = missing
            elif task_name == NTREX:
                selected, _ = _select_ntrex(task, self._language_filter, None, self.pairs)
                task.hf_subsets = _ntrex_subsets(task, list(selected.values()), self.pairs)
            elif self._language_filter is not None:
                task = mteb.get_task(task_name, languages=[_tatoeba_language(c) for c in self._language_filter])
            self.tasks.append(task)

    def evaluate(self, encoder: TextEncoder, *, batch_size: int, work_dir: Path, progress: bool = True) -> dict[str, float]:
        """Every task through `mteb.evaluate`; mteb's result files go to `<work_dir>/results/`."""
        if not self.tasks:
            self.prepare()
        model = DualEncoderForMteb(encoder, symmetric_role=self.symmetric_role, max_length=self.max_length)
        cache = mteb.ResultCache(cache_path=work_dir)
        metrics: dict[str, float] = {}
        for task in self.tasks:
            result = mteb.evaluate(
                model,
                task,
                cache=cache,
                overwrite_strategy="always",
                encode_kwargs={"batch_size": batch_size, "show_progress_bar": progress},
                show_progress_bar=progress,
                co2_tracker=False,
            )
            (task_result,) = result.task_results
            scores = task_metrics(task_result, task.metadata.main_score)
            metrics.update({f"{task.metadata.name}/{k}": v for k, v in scores.items()})
            log.info("mteb %s: mean %s %.4f over %d subsets", task.metadata.name, task.metadata.main_score,
                     scores[f"mean/{task.metadata.main_score}"], len(task.hf_subsets))
        log.info("mteb result files under %s", cache.cache_path / "results")
        return metrics
