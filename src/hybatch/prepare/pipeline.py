"""One preparation run: source -> normalised pairs -> contamination guard -> shard -> translation
(sentence by sentence, through the cache, in length-sorted batches) -> quality filters -> the
parallel JSONL file `data=parallel_jsonl` reads, and its card. Both are written atomically: a
killed run leaves no file that looks complete, and rerunning it translates only what the cache lacks.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from hybatch.atomic import atomic_open
from hybatch.data.corpus import ParallelCorpus, ParallelExample, Translation
from hybatch.data.training_data import TrainingData
from hybatch.prepare.cache import TranslationCache
from hybatch.prepare.card import build_card, card_path, write_card
from hybatch.prepare.filters import TranslationFilter
from hybatch.prepare.sentences import join_sentences, split_sentences
from hybatch.prepare.sources import Source
from hybatch.prepare.translation import Translator

log = logging.getLogger(__name__)


class PrepareError(ValueError):
    """The preparation run is configured in a way it cannot honour."""


def output_path(out_dir: Path, name: str, shard: int, num_shards: int) -> Path:
    """`<out_dir>/<name>.jsonl`, or `<name>.shard-00003-of-00008.jsonl` for one shard of several
    (the dataset name is the part before the first dot, as `data=parallel_jsonl` reads it)."""
    if num_shards == 1:
        return out_dir / f"{name}.jsonl"
    return out_dir / f"{name}.shard-{shard:05d}-of-{num_shards:05d}.jsonl"


def translate_texts(
    texts: Sequence[str], translator: Translator, cache: TranslationCache, src: str, tgt: str,
    stats: Counter[str], progress: bool = True,
) -> dict[str, str]:  # fmt: skip
    """`text -> translation` for every text: from the cache, else translated in batches of similar
    length (little padding), each batch committed to the cache as soon as it is done."""
    unique = list(dict.fromkeys(texts))
    done = cache.get(translator.cache_key, src, tgt, unique)
    todo = sorted((t for t in unique if t not in done), key=lambda t: (len(t), t))
    stats["sentences"] += len(unique)
    stats["cache_hits"] += len(unique) - len(todo)
    if todo:
        translator.load_for(src, tgt)
    start = time.perf_counter()
    with tqdm(total=len(todo), unit="sent", desc=f"translate {src}->{tgt}", disable=not progress, dynamic_ncols=True) as bar:
        for i in range(0, len(todo), translator.batch_size):
            batch = todo[i : i + translator.batch_size]
            outputs = translator.translate(batch, src, tgt)
            if len(outputs) != len(batch):
                raise PrepareError(f"translator {translator.cache_key} returned {len(outputs)} outputs for {len(batch)} inputs")
            new = dict(zip(batch, outputs))
            cache.put(translator.cache_key, src, tgt, new)
            done.update(new)
            stats["translated"] += len(batch)
            bar.update(len(batch))
    stats["seconds"] += time.perf_counter() - start
    return done


@dataclass
class Prepared:
    """What one run produced: the examples in every language and the counts for the card."""

    examples: list[ParallelExample]
    counts: dict[str, Any] = field(default_factory=dict)
    translation_stats: dict[str, dict[str, float]] = field(default_factory=dict)


def translate_examples(
    examples: list[ParallelExample], languages: Sequence[str], src: str, translator: Translator | None,
    cache: TranslationCache | None, filters: TranslationFilter, split: bool = True, progress: bool = True,
) -> Prepared:  # fmt: skip
    """Add every language of `languages` an example lacks, translated from its `src` version.

    Queries are translated whole; positives and negatives sentence by sentence, then rejoined. An
    output that fails a filter leaves that example without that language (a failing negative is
    just left out); every rejection is counted.
    """
    stats: dict[str, dict[str, float]] = {}
    missing_counts: Counter[str] = Counter()
    translations = [dict(ex.translations) for ex in examples]

    def pieces(text: str) -> list[str]:
        return split_sentences(text) if split else [text]

    for tgt in languages:
        needing = [i for i, ex in enumerate(examples) if tgt not in ex.translations and src in ex.translations]
        if not needing:
            continue
        if translator is None or cache is None:
            missing_counts[tgt] += len(needing)
            continue
        texts: list[str] = []
        for i in needing:
            t = examples[i].translations[src]
            texts.append(t.query)
            for passage in (t.positive, *t.negatives):
                texts.extend(pieces(passage))
        lang_stats: Counter[str] = Counter(sentences=0, cache_hits=0, translated=0, seconds=0.0)
        out = translate_texts(texts, translator, cache, src, tgt, lang_stats, progress)

        def passage_of(text: str) -> str:
            return join_sentences([out[s] for s in pieces(text)], tgt)  # noqa: B023 (used in this iteration)

        for i in needing:
            t = examples[i].translations[src]
            query, positive = out[t.query], passage_of(t.positive)
            if not (filters.check(t.query, query, src, tgt, "query") and filters.check(t.positive, positive, src, tgt, "positive")):
                continue
            outputs = [(n, passage_of(n)) for n in t.negatives]
            kept = tuple(o for n, o in outputs if filters.check(n, o, src, tgt, "negative"))
            translations[i][tgt] = Translation(query, positive, kept)
        stats[tgt] = {**lang_stats, "sentences_per_s": round(lang_stats["translated"] / lang_stats["seconds"], 2) if lang_stats["seconds"] else None}
    result = [
        ParallelExample(ex.id, ex.dataset, {lang: translations[i][lang] for lang in (src, *languages) if lang in translations[i]}, ex.article)
        for i, ex in enumerate(examples)
    ]
    counts = {
        "filtered": dict(sorted(filters.counts.items())),
        "untranslated_no_translator": dict(missing_counts),
        "examples_with_language": {lang: sum(lang in ex.translations for ex in result) for lang in (src, *languages)},
    }
    return Prepared(result, counts, stats)


def to_jsonl_line(ex: ParallelExample) -> str:
    record: dict[str, Any] = {"id": ex.id, "dataset": ex.dataset}
    if ex.article:
        record["article"] = ex.article
    record["translations"] = {
        lang: {"query": t.query, "positive": t.positive, **({"negatives": list(t.negatives)} if t.negatives else {})}
        for lang, t in ex.translations.items()
    }
    return json.dumps(record, ensure_ascii=False)


def write_jsonl_atomically(path: Path, examples: Sequence[ParallelExample]) -> None:
    """A hidden temporary file (not matched by `*.jsonl`) renamed over `path` once complete and synced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, durable=True) as f:
        for ex in examples:
            f.write(to_jsonl_line(ex) + "\n")


def guard_contamination(examples: list[ParallelExample], hygiene: Callable[[TrainingData], TrainingData] | None) -> tuple[list[ParallelExample], int]:
    """The examples that pass the contamination guard (`hybatch.data.hygiene`), and how many did not."""
    if hygiene is None or not examples:
        return examples, 0
    kept = hygiene(TrainingData(ParallelCorpus(examples))).train.examples
    return kept, len(examples) - len(kept)


def run_prepare(cfg: DictConfig) -> Path:
    """The whole run from a `prepare.yaml` config; returns the written JSONL path."""
    start = time.perf_counter()
    if not 0 <= cfg.shard < cfg.num_shards:
        raise PrepareError(f"shard={cfg.shard}, num_shards={cfg.num_shards}: expected 0 <= shard < num_shards")
    source: Source = instantiate(cfg.dataset)
    languages = [lang for lang in cfg.languages if lang != source.language]
    out_dir = Path(cfg.out_dir).expanduser()
    out = output_path(out_dir, source.name, cfg.shard, cfg.num_shards)

    # With a limit, the source stops reading there (a hub dataset is streamed, not downloaded whole).
    examples, source_counts = source.examples(limit=cfg.limit)
    log.info("%s: %d examples from %d rows; dropped %s", source.name, len(examples), source_counts["rows"],
             {k: v for k, v in source_counts.items() if k not in ("rows", "examples")})  # fmt: skip
    if cfg.limit is not None:
        examples = examples[: cfg.limit]
    hygiene = instantiate(cfg.hygiene) if cfg.hygiene else None
    examples, contaminated = guard_contamination(examples, hygiene)
    examples = examples[cfg.shard :: cfg.num_shards]
    if not examples:
        raise PrepareError(f"no example of {source.name} is left to prepare (counts: {dict(source_counts)}); check dataset.fields")
    log.info("shard %d of %d: %d examples; target languages %s", cfg.shard, cfg.num_shards, len(examples), languages)

    needs_mt = any(lang not in ex.translations for ex in examples for lang in languages)
    translator: Translator | None = instantiate(cfg.translate) if cfg.translate and needs_mt else None
    filters = TranslationFilter(**OmegaConf.to_container(cfg.filters, resolve=True))
    cache = TranslationCache(cfg.cache_path) if translator is not None else None
    try:
        prepared = translate_examples(examples, languages, source.language, translator, cache, filters,
                                      split=cfg.split_sentences, progress=cfg.progress)  # fmt: skip
    finally:
        if cache is not None:
            cache.close()
    write_jsonl_atomically(out, prepared.examples)
    counts = {
        "source": dict(source_counts),
        "after_limit": min(cfg.limit, source_counts["examples"]) if cfg.limit is not None else source_counts["examples"],
        "contaminated_dropped": contaminated,
        "shard_examples": len(examples),
        **prepared.counts,
        "written": len(prepared.examples),
    }
    # Which benchmarks the guard checked and which it could not obtain (offline), and why.
    hygiene_report = hygiene.report() if hasattr(hygiene, "report") else None
    translation = None
    if translator is not None:
        translation = {"target": cfg.translate["_target_"], "cache_key": translator.cache_key,
                       "device": str(getattr(translator, "device", "n/a")), "dtype": str(getattr(translator, "dtype", "n/a")),
                       "cache_path": str(Path(cfg.cache_path).expanduser().resolve())}  # fmt: skip
    card = build_card(
        dataset=source.name, output=out, source=source.describe(), translation=translation,
        source_language=source.language, languages=[source.language, *languages], shard=cfg.shard,
        num_shards=cfg.num_shards, counts=counts, hygiene=hygiene_report, translation_stats=prepared.translation_stats,
        seconds=time.perf_counter() - start,
    )  # fmt: skip
    write_card(card_path(out), card)
    log.info("wrote %d examples to %s (filtered: %s)", len(prepared.examples), out, prepared.counts["filtered"] or "none")
    return out
