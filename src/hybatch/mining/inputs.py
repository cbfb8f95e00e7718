"""What mining reads and writes: a parallel JSONL file, a `prepare_data.py` output directory, or the
training split of XQuAD-R, and the same lines back with `negatives` filled per language.

Every input line is written back with all its keys; only `translations.<lang>.negatives` of the mined
languages are replaced (a language left out of `languages` keeps what it had). A directory is mined one
dataset at a time (`<dataset>.jsonl` and its `<dataset>.shard-*.jsonl` together: a batch draws from one
dataset, so its negatives come from that dataset's passages).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybatch.atomic import atomic_open
from hybatch.data.corpus import ParallelCorpus
from hybatch.data.parallel_jsonl import read_parallel_jsonl
from hybatch.data.prepared_dir import prepared_files
from hybatch.data.training_data import TrainingData

XQUAD_R_INPUT = "xquad_r_split"


@dataclass
class MiningJob:
    """One corpus to mine: its examples, the records to write back (one per example, in order) and
    where: `outputs` are (path, number of records) in order, `report` the `.mine.json`."""

    name: str
    corpus: ParallelCorpus
    records: list[dict[str, Any]]
    outputs: list[tuple[Path, int]]
    report: Path
    work_dir: Path
    source: dict[str, Any] = field(default_factory=dict)
    # Files that travel with the output as they are: a prepared dataset's `.card.json` (its source and
    # license, which the model card of a run trained on the mined folder reads).
    copies: list[tuple[Path, Path]] = field(default_factory=list)


def report_path(out: Path) -> Path:
    """`x/nq.mined.jsonl` -> `x/nq.mined.mine.json`."""
    return out.with_name(out.name.removesuffix(".jsonl") + ".mine.json")


def _records(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a file that `read_parallel_jsonl` validated, with the same blank-line rule."""
    with path.open(encoding="utf-8", newline="\n") as f:
        return [json.loads(line.rstrip("\r\n")) for line in f if line.strip()]


def _file_job(name: str, files: list[Path], outputs: list[Path], report: Path, work_dir: Path) -> MiningJob:
    corpus = read_parallel_jsonl(files)
    per_file = [_records(path) for path in files]
    records = [r for file_records in per_file for r in file_records]
    # The negatives are written back onto `records` in the corpus' order: both must be the same lines.
    if [str(r.get("id")) for r in records] != [ex.id for ex in corpus]:
        raise ValueError(f"{', '.join(map(str, files))}: the lines read as text do not match the validated examples "
                         "(a stray carriage return inside a line?); rewrite the file with one JSON object per line")
    counts = [len(file_records) for file_records in per_file]
    source = {"files": [str(p) for p in files]}
    return MiningJob(name, corpus, records, list(zip(outputs, counts, strict=True)), report, work_dir, source)


def jobs_for(
    input: str, out: str | os.PathLike, work_dir: str | os.PathLike | None, xquad_r: Callable[[], TrainingData]
) -> list[MiningJob]:
    """The jobs of `input` (a file, a directory, or `xquad_r_split`: `xquad_r()` loads the split)."""
    out = Path(out).expanduser()
    if input == XQUAD_R_INPUT:
        return [_xquad_r_job(xquad_r(), out, Path(work_dir) if work_dir else Path(f"{out}.mine-work"))]
    path = Path(input).expanduser()
    if path.is_dir():
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"out={out}: input={input} is a directory, so out must be one (one file per input file)")
        if out.resolve() == path.resolve():
            raise ValueError(f"out={out} is the input directory: choose another one, the input files stay as they are")
        root = Path(work_dir) if work_dir else out / ".mine-work"
        datasets: dict[str, list[Path]] = {}
        for file in prepared_files(path, key="input"):
            datasets.setdefault(file.name.split(".")[0], []).append(file)
        jobs = [_file_job(name, files, [out / p.name for p in files], out / f"{name}.mine.json", root / name)
                for name, files in datasets.items()]  # fmt: skip
        for job in jobs:
            card = path / f"{job.name}.card.json"
            if card.is_file():
                job.copies.append((card, out / card.name))
        return jobs
    if not path.is_file():
        raise FileNotFoundError(f"input={input}: no such file or directory (a parallel JSONL file, a prepare_data.py "
                                f"out_dir, or {XQUAD_R_INPUT})")  # fmt: skip
    if out.resolve() == path.resolve():
        raise ValueError(f"out={out} is the input file: choose another path, the input stays as it is")
    if out.suffix != ".jsonl":
        raise ValueError(f"out={out}: expected a .jsonl file name (data=parallel_jsonl reads *.jsonl)")
    return [_file_job(path.name.split(".")[0], [path], [out], report_path(out), Path(work_dir) if work_dir else Path(f"{out}.mine-work"))]


def _xquad_r_job(data: TrainingData, out: Path, work_dir: Path) -> MiningJob:
    """The TRAINING articles of the XQuAD-R split, as parallel JSONL records: candidates never come from
    a validation or test article, because the corpus mined holds no other article."""
    if out.suffix != ".jsonl":
        raise ValueError(f"out={out}: expected a .jsonl file name (data=parallel_jsonl reads *.jsonl)")
    records = [
        {"id": ex.id, "dataset": ex.dataset, "article": ex.article,
         "translations": {lang: {"query": t.query, "positive": t.positive, "negatives": list(t.negatives)}
                          for lang, t in ex.translations.items()}}
        for ex in data.train.examples
    ]  # fmt: skip
    source = {"xquad_r_split": data.split}
    return MiningJob("xquad_r", data.train, records, [(out, len(records))], report_path(out), work_dir, source)


def write_outputs(job: MiningJob, negatives: Mapping[str, Mapping[int, list[str]]]) -> None:
    """Each output file, written whole or not at all: the job's records with `negatives[lang][example]`."""
    records = iter(enumerate(job.records))
    for path, count in job.outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, durable=True) as f:
            for _ in range(count):
                i, record = next(records)
                for lang, translation in record["translations"].items():
                    if lang in negatives:
                        translation["negatives"] = negatives[lang].get(i, [])
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    for source, target in job.copies:
        with atomic_open(target, "wb", durable=True) as f:
            f.write(source.read_bytes())
