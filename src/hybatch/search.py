"""`hybatch-search`: search a corpus of one's own with an encoder and write a TREC run file (conf/search.yaml).

    hybatch-search corpus=corpus.jsonl queries=queries.jsonl out=run.trec top_k=100 model.name_or_path=<run dir>/model

The corpus is encoded into resumable shards (`hybatch.retrieval.index`): an interrupted run resumes
at its first unfinished shard, and a rerun with the same model and corpus only searches. With
`num_shards=N`, part i holds documents i, i+N, i+2N, ... in its own folder, so N processes (one per
GPU or machine sharing the folder) encode the parts at once (`shard_index=i`); a final run without
`shard_index` searches all parts as one corpus.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from pathlib import Path

import hydra
from omegaconf import DictConfig

from hybatch.config import CONFIG_DIR

log = logging.getLogger(__name__)


@hydra.main(config_path=CONFIG_DIR, config_name="search", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Encode (a part of) the corpus; without `shard_index`, search it and write `out`."""
    run_search(cfg)


def _checked(cfg: DictConfig) -> tuple[Path, Path | None, Path, list[int]]:
    """corpus, queries, embeddings root and the parts this process encodes; config errors before any model loads."""
    from hybatch.evaluation.ranked_retrieval import check_settings

    corpus = Path(cfg.corpus).expanduser()
    if not corpus.is_file():
        raise FileNotFoundError(f"corpus={cfg.corpus}: no such file")
    num_shards, shard_index = int(cfg.num_shards), cfg.get("shard_index")
    if num_shards < 1:
        raise ValueError(f"num_shards={num_shards}: expected 1 or more")
    if shard_index is not None and not 0 <= int(shard_index) < num_shards:
        raise ValueError(f"shard_index={shard_index}: expected 0 .. num_shards-1 = {num_shards - 1}")
    queries = Path(cfg.queries).expanduser() if cfg.get("queries") else None
    if shard_index is None and (queries is None or not queries.is_file()):
        raise FileNotFoundError(f"queries={cfg.get('queries')}: no such file (only a run with shard_index may leave it out)")
    check_settings("search", index=cfg.index, dtype=cfg.dtype, passage_template=cfg.passage_template, top_k=int(cfg.top_k))
    if not str(cfg.tag) or any(ch.isspace() for ch in str(cfg.tag)):
        raise ValueError(f"tag={cfg.tag!r}: the last column of a TREC run line, expected one word without spaces")
    if cfg.index == "shards" and cfg.get("index_options"):
        raise ValueError(f"index=shards is an exact scan of the shards: index_options={cfg.index_options} has no meaning there")
    root = Path(cfg.embeddings_dir) if cfg.get("embeddings_dir") else Path(f"{cfg.out}.embeddings")
    parts = [int(shard_index)] if shard_index is not None else list(range(num_shards))
    return corpus, queries, root, parts


def run_search(cfg: DictConfig) -> Path | None:
    """The run file written (None when this process only encoded its part, `shard_index` set)."""
    import torch
    from omegaconf import OmegaConf

    from hybatch.backbones.loading import load_encoder
    from hybatch.data.beir_folder import iter_corpus, read_queries
    from hybatch.evaluation.ranked_retrieval import RetrievalDataError, passage_text
    from hybatch.retrieval.index import encode_shards
    from hybatch.retrieval.runs import ranked_hits, search_stores, write_trec_run

    corpus, queries_path, root, parts = _checked(cfg)
    queries = read_queries(queries_path) if queries_path else {}  # a malformed file fails before encoding
    encoder = load_encoder(cfg)
    if isinstance(encoder, torch.nn.Module):
        encoder.eval()
    num_shards, template = int(cfg.num_shards), str(cfg.passage_template)
    stores = []
    for part in parts:
        documents = ((doc, passage_text(title, text, template)) for doc, title, text in iter_corpus(corpus))
        stores.append(encode_shards(
            root / f"part-{part:05d}-of-{num_shards:05d}",
            itertools.islice(documents, part, None, num_shards),
            encoder,
            role="passage",
            # Size and modification time: an edited corpus is encoded again, never served from stale shards.
            fingerprint=f"search/{corpus.resolve()}:{corpus.stat().st_size}:{corpus.stat().st_mtime_ns}/part {part} of {num_shards}/{template}",
            shard_size=int(cfg.shard_size), batch_size=int(cfg.batch_size), dtype=cfg.dtype, progress=bool(cfg.progress),
        ))  # fmt: skip
    if cfg.get("shard_index") is not None:
        log.info("encoded part %d of %d into %s; run again without shard_index to search", parts[0], num_shards, stores[0].directory)
        return None
    docids = [doc for store in stores for doc in store.ids()]
    if len(set(docids)) != len(docids):
        dup = next(d for d, n in Counter(docids).items() if n > 1)
        raise RetrievalDataError(f"{corpus}: document id {dup!r} appears twice")
    if not queries:
        raise RetrievalDataError(f"{queries_path}: no query")
    qids = list(queries)
    with torch.inference_mode():
        query_emb = encoder.encode([queries[q] for q in qids], "query", batch_size=int(cfg.batch_size), progress=bool(cfg.progress))
    top_k, exclude = int(cfg.top_k), bool(cfg.exclude_query_id)
    index_options = OmegaConf.to_container(cfg.index_options, resolve=True) if cfg.get("index_options") else {}
    scores, rows = search_stores(stores, query_emb, top_k + exclude, index=cfg.index, index_options=index_options,
                                 progress=bool(cfg.progress))
    run = ranked_hits(qids, docids, scores, rows, top_k=top_k, exclude_query_id=exclude)
    out = write_trec_run(Path(cfg.out).expanduser(), run, str(cfg.tag))
    log.info("wrote the top %d of %d documents for %d queries to %s", top_k, len(docids), len(qids), out)
    return out
