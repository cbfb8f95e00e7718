"""Every shell command in README.md and docs/*.md runs as written (issue 12, item 3).

What counts as a command (the rule `documented_commands` applies):
  * fenced code blocks tagged ``bash``, ``sh``, ``shell`` or ``zsh``: every line;
  * blocks tagged ``console``: the lines starting with ``$ `` (the prompt removed; the rest is output);
  * untagged blocks: the lines that start with a command word (COMMAND_WORDS, or an ``VAR=value`` prefix);
  * blocks in any other language (python, json, yaml, ...) and inline `code` in prose are not collected:
    put a command that should be tested in a block.
A line ending in ``\\`` continues on the next, and a ``for`` / ``while`` / ``if`` over several lines is one
command (``for s in a b; do python p.py source=$s; done``); blank lines, ``#`` comment lines and a trailing
``  # comment`` are dropped; whitespace is collapsed to single spaces. That text is the command's key in COMMANDS.

COMMANDS, the one table: each documented command maps to
  * ``Run(overrides, replace=..., produces=..., expects=...)``: run by bash from the repository root, with
    PLACEHOLDERS substituted, each ``replace`` edit made, and ``overrides`` appended (Hydra: a later
    ``key=value`` wins, so they make the run cheap: model=tiny, 2 steps, 2 languages of ../shared's
    XQuAD-R, output under a temporary folder); it must exit 0 (and leave ``expects`` in its output folder);
  * ``Skip(reason)``: not run (GPU, hub, cluster, too long, or run elsewhere), shown as a skipped test.
A command in the docs that is not in the table fails `test_every_documented_command_is_in_the_table`
(add a row), and so does a row whose command no document has any more.

``produces`` names the placeholder a run's output folder stands for in other commands
(``outputs/train/<time>`` is the folder of the tiny ``python train.py``): those run first, once.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import run_python

COMMAND_WORDS = ("python", "python3", "pip", "hybatch-", "ruff", "pytest", "bash", "./")
SHELL_TAGS = ("bash", "sh", "shell", "zsh")
OPENS, CLOSES = r"^(for|while|until|if|case)\b", r"(^|;\s*)(done|fi|esac)\b"
REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Under pytest-xdist (`-n 2 --dist loadgroup`, README's test command) every test of this file runs in one
# worker: the commands run once, two at a time, from one Runner.
pytestmark = pytest.mark.xdist_group("docs-commands")


@dataclass(frozen=True)
class Run:
    overrides: tuple[str, ...] = ()
    replace: Mapping[str, str] = field(default_factory=dict)
    produces: str | None = None
    expects: tuple[str, ...] = ()


@dataclass(frozen=True)
class Skip:
    reason: str


# Appended to train.py / describe_batches commands: the tiny model, 2 training languages of a 12-article
# slice of ../shared's XQuAD-R, an epoch of 2 batches of 8 (so validation and the test split run), no
# zero-shot baseline, output under {out} (a fresh temporary folder per command).
TINY_DATA = (
    "data.data_dir={xquad_r}", "data.languages=[en,de]", "data.source.languages=[en,de]",
    "data.source.max_articles=12", "data.batch_size=8",
)
TINY_TRAIN = (
    "model=tiny", *TINY_DATA, "trainer.max_steps=2", "++trainer.limit_train_batches=2", "baseline=false",
    "callbacks.progress_bar=null", "hydra.run.dir={out}", "hydra.sweep.dir={out}",
)
# Appended to evaluate.py commands: 2 languages of ../shared's XQuAD-R (model=tiny where the command
# would evaluate the bundled model: minutes of CPU; tests/test_bundled_model.py covers that model).
TINY_EVAL = ("benchmark.languages=[en,de]", "benchmark.data_dir={xquad_r}", "hydra.run.dir={out}")
# The sweep report's input: one seed instead of two, two batch types instead of three.
SMALL_SWEEP = ("seed=1", "sampler=mono,hybrid")
# Other multiruns: one job (the sweep machinery still runs), no exported model.
ONE_JOB = (*TINY_TRAIN, "export_model=false")

# Placeholders in the docs that stand for a path on the user's machine.
PLACEHOLDERS = {"/data/xquad-r": "{xquad_r}", "/path/to/xquad-r": "{xquad_r}"}

HUB = "needs the Hugging Face hub"
# hybatch-search writes where `out=` says: into the command's own temporary folder.
SEARCH_OUT = {"outputs/search/": "{out}/"}
SLURM = "needs a SLURM cluster (submitit launcher) with GPUs"
COMMANDS: dict[str, Run | Skip] = {
    # README.md: quick start
    "pip install -r requirements.txt": Skip("the set-up step: .ci/run runs it before the tests"),
    "python train.py": Run(
        TINY_TRAIN, produces="outputs/train/<time>",
        expects=("model/config.json", "metrics.json", "test_report", "checkpoints/last.ckpt", "config.yaml",
                 "run_info.json", ".hydra/config.yaml", "train.log"),
    ),
    "ruff check . && python -m pytest -q -n 2 --dist loadgroup": Skip("the test command itself: .ci/run runs it"),
    # README.md: configuration
    "python train.py sampler=hybrid model=labse": Skip(f"{HUB} (LaBSE)"),
    "python train.py -m sampler=mono,cross,hybrid seed=1,2": Run((*ONE_JOB, "sampler=hybrid", "seed=1")),
    "python train.py -m experiment=sampler_comparison": Run(
        (*TINY_TRAIN, *SMALL_SWEEP), produces="multirun/sampler_comparison/<time>"
    ),
    "python train.py -m experiment=sampler_comparison_cv": Run((*ONE_JOB, "sampler=hybrid", "data.source.split.fold=0")),
    "python train.py -m experiment=alpha_sweep": Run((*ONE_JOB, "sampler.alpha=0")),
    "python train.py -m experiment=optuna": Run((*ONE_JOB, "hydra.sweeper.n_trials=1")),
    "python train.py logger=wandb": Run(TINY_TRAIN, expects=("wandb",)),
    "python -m hybatch.report multirun/sampler_comparison/<time>": Run(),
    "python -m hybatch.describe_batches sampler=hybrid sampler.alpha=0.3 +num_batches=2000 +world_size=4": Run(
        (*TINY_DATA, "hydra.run.dir={out}"), expects=("batches.json",)
    ),
    # README.md: weight interpolation
    "python train.py interpolation=wise_ft": Run(TINY_TRAIN, expects=("interpolation/curve.png", "interpolation/curve.csv", "model/config.json")),
    "python train.py interpolation=wise_ft interpolation.rule=constrained interpolation.margin=0.005": Run(
        TINY_TRAIN, expects=("interpolation/curve.csv",)
    ),
    # README.md: evaluation
    "python evaluate.py benchmark=xquad_r model=me5_small_bundled": Run(
        TINY_EVAL, replace={"model=me5_small_bundled": "model=tiny"}, expects=("metrics.json",)
    ),
    "python evaluate.py model.name_or_path=outputs/train/<time>/model": Run(TINY_EVAL, expects=("metrics.json",)),
    "python evaluate.py ckpt_path=outputs/train/<time>/checkpoints/last.ckpt": Run(TINY_EVAL, expects=("metrics.json",)),
    "python evaluate.py benchmark=all benchmark.benchmarks.miracl.data_dir=/data/miracl": Skip(
        "needs MIRACL's files and the MLQA-R download"
    ),
    "python evaluate.py benchmark.languages=[en,de,ar] benchmark.data_dir=/data/xquad-r": Run(
        (*TINY_EVAL, "model=tiny"), expects=("metrics.json",)
    ),
    # README.md: MTEB
    'python evaluate.py benchmark=mteb "benchmark.tasks=[Tatoeba]" benchmark.data_dir=/data/tatoeba/v1 '
    '"benchmark.languages=[deu,swh]"': Skip("needs a local copy of Tatoeba (no copy in ../shared)"),
    'python evaluate.py benchmark=ntrex benchmark.data_dir=../shared/data/ntrex-128 "benchmark.languages=[deu,swa,amh]"': Run(
        ("model=tiny", "hydra.run.dir={out}"), expects=("metrics.json",)
    ),
    'python evaluate.py benchmark=mteb "benchmark.tasks=[SciFact,XNLI]" model=me5_small': Skip(f"{HUB} (tasks and model)"),
    "python evaluate.py benchmark=all benchmark.benchmarks.miracl.data_dir=/data/miracl +benchmark/with=mteb "
    '"benchmark.tasks=[Tatoeba]"': Skip("needs MIRACL's files, the MLQA-R download and a copy of Tatoeba"),
    # docs/data.md
    "pip install -e '.[prepare]'": Skip("installs the prepare extras from PyPI"),
    "python prepare_data.py dataset=wikiqa translate=nllb_600m out_dir=data/prepared": Skip(f"{HUB} (WikiQA, NLLB)"),
    "python prepare_data.py dataset=wikiqa translate=tiny languages=[de,es] limit=200 out_dir=data/smoke": Skip(
        f"{HUB} (WikiQA)"
    ),
    "for s in wikiqa duorc newsqa natural_questions yahoo_answers; do python prepare_data.py dataset=$s "
    "translate=ctranslate2_nllb out_dir=data/prepared; done": Skip(f"{HUB} (the datasets, NLLB); hours of translation"),
    "python prepare_data.py dataset=mrtydi_en languages=[] out_dir=data/prepared": Skip(f"{HUB} (Mr. TyDi)"),
    "python prepare_data.py dataset=mfaq_en languages=[] out_dir=data/prepared": Skip(f"{HUB} (MFAQ)"),
    "python prepare_data.py dataset=wikiqa dataset.split=validation dataset.name=wikiqa_val languages=[] out_dir=data/val": Skip(
        f"{HUB} (WikiQA)"
    ),
    "python train.py experiment=paper_xlmr data.source.directory=data/prepared data.source.val=[data/val/wikiqa_val.jsonl]": Skip(
        f"needs a GPU (trainer=gpu), {HUB} and the prepared mixture; tests/test_config.py builds the recipe on tiny data"
    ),
    "python train.py experiment=paper_labse data.source.directory=data/prepared data.source.val=[data/val/wikiqa_val.jsonl]": Skip(
        f"needs a GPU (trainer=gpu), {HUB} and the prepared mixture; tests/test_config.py builds the recipe on tiny data"
    ),
    "python prepare_data.py dataset=natural_questions translate=nllb_600m limit=2000 out_dir=data/probe": Skip(
        f"{HUB} (Natural Questions, NLLB)"
    ),
    """python -c "import json; c = json.load(open('data/probe/nq.card.json')); print({l: s['sentences_per_s'] for l, s in """
    """c['translation_stats'].items()})\"""": Skip("reads the card of the probe above, which needs the hub"),
    "python prepare_data.py -m dataset=natural_questions translate=nllb_600m shard=0,1,2,3 num_shards=4 out_dir=data/prepared": Skip(
        f"{HUB} (Natural Questions, NLLB)"
    ),
    "python prepare_data.py -m dataset=natural_questions translate=ctranslate2_nllb shard='range(0,32)' num_shards=32 "
    "out_dir=/shared/data/prepared hydra/launcher=submitit_slurm_prepare hydra.launcher.partition=gpu": Skip(SLURM),
    # docs/cluster.md
    "python train.py -m hydra/launcher=submitit_slurm hydra.launcher.partition=gpu trainer=ddp trainer.num_nodes=2 "
    "model=xlmr_large data.batch_size=64 sampler=mono,cross,hybrid": Skip(SLURM),
    "python train.py -m hydra/launcher=submitit_slurm hydra.launcher.partition=gpu trainer=fsdp trainer.num_nodes=4 "
    "model=xlmr_xxl data.batch_size=16 sampler=hybrid": Skip(SLURM),
    # docs/performance.md
    "python train.py -m trainer=ddp_cpu trainer.strategy=ddp_spawn sampler=mono,cross,hybrid": Skip(
        "too long here (3 runs x 2 spawned processes, each importing torch); "
        "tests/test_distributed.py::test_local_multirun_trains_with_ddp_spawn runs this multirun with model=tiny"
    ),
    "python train.py trainer=fsdp model=xlmr_xl data.batch_size=32 sampler=hybrid": Skip(f"needs GPUs (FSDP); {HUB}"),
    "python train.py trainer=fsdp model=qwen3_embedding_8b data.batch_size=16": Skip(f"needs GPUs (FSDP); {HUB}"),
    "python train.py trainer=fsdp model=xlmr_xxl trainer.num_nodes=2 hydra/launcher=submitit_slurm -m": Skip(SLURM),
    'pip install -e ".[bench]"': Skip("installs the bench extras from PyPI"),
    "HYBATCH_CACHE=/tmp/hbc python benchmarks/train_throughput.py --batch-size 32 --steps 5 --warmup-steps 1 "
    "--rounds 2": Skip("a benchmark: minutes of CPU, and the bench extras"),
    "HYBATCH_CACHE=/tmp/hbc python benchmarks/memory.py --batch-sizes 8 16 32 64 128 256": Skip(
        "a benchmark: a fresh process per point, up to 12 GB"
    ),
    "HYBATCH_CACHE=/tmp/hbc python benchmarks/multirun_memory.py --jobs 5 --max-steps 2": Skip(
        "a benchmark: 5 default runs with the bundled model"
    ),
    "bash benchmarks/gpu_check.sh /tmp/gpu_check.json": Skip("needs a GPU"),
    "python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check_smoke.json": Skip(
        "tests/test_gpu_check.py runs the smoke mode"
    ),
    # docs/deploy.md
    "python evaluate.py benchmark=beir benchmark.data_dir=examples/beir-tiny": Run(
        ("model=tiny", "hydra.run.dir={out}"), expects=("metrics.json", "beir/run.trec")
    ),
    "python evaluate.py benchmark=beir benchmark.data_dir=examples/beir-tiny model.name_or_path=outputs/train/<time>/model": Run(
        ("hydra.run.dir={out}",), expects=("metrics.json", "beir/run.trec")
    ),
    "pip install -e . --no-deps": Skip("the set-up step installs the console scripts (pip install -r requirements.txt)"),
    "hybatch-search corpus=examples/beir-tiny/corpus.jsonl queries=examples/beir-tiny/queries.jsonl out=outputs/search/run.trec top_k=10": Run(
        ("model=tiny",), replace=SEARCH_OUT, expects=("run.trec",)
    ),
    "hybatch-search corpus=examples/beir-tiny/corpus.jsonl queries=examples/beir-tiny/queries.jsonl out=outputs/search/trained.trec top_k=10 "
    "model.name_or_path=outputs/train/<time>/model index=hnsw": Run(replace=SEARCH_OUT, expects=("trained.trec",)),
    "for i in 0 1; do hybatch-search corpus=examples/beir-tiny/corpus.jsonl out=outputs/search/sharded.trec num_shards=2 shard_index=$i; done": Run(
        replace={**SEARCH_OUT, "shard_index=$i": "shard_index=$i model=tiny"}, expects=("sharded.trec.embeddings",)
    ),
    "hybatch-search corpus=examples/beir-tiny/corpus.jsonl queries=examples/beir-tiny/queries.jsonl out=outputs/search/sharded.trec num_shards=2": Run(
        ("model=tiny",), replace=SEARCH_OUT, expects=("sharded.trec",)
    ),
    "python -m hybatch.model_card outputs/train/<time>": Run(),
    "python -m hybatch.model_card outputs/train/<time> --license apache-2.0": Run(),
    "python -m hybatch.publish outputs/train/<time> repo_id=<user>/<model> private=true": Skip(
        f"{HUB} (an upload); tests/test_publish.py checks the offline refusal"
    ),
    # docs/mining.md (the tiny model mines nothing above a score ratio: max_score_ratio=null keeps the rest)
    "python mine_negatives.py input=xquad_r_split data.data_dir=/data/xquad-r data.source.split.folds=5 data.source.split.fold=0 "
    "out=data/mined/xquad_r_fold0.jsonl": Run(
        ("model=tiny", "data.source.languages=[en,de]", "data.source.max_articles=12", "max_score_ratio=null",
         "out={out}/xquad_r_fold0.jsonl", "hydra.run.dir={out}/run"),
        produces="data/mined", expects=("xquad_r_fold0.jsonl", "xquad_r_fold0.mine.json"),
    ),
    "python train.py data=parallel_jsonl data.source.train=[data/mined/xquad_r_fold0.jsonl] data.num_hard_negatives=2 data.hygiene=null": Run(
        ("model=tiny", "data.languages=[en,de]", "data.batch_size=8", "trainer.max_steps=2", "++trainer.limit_train_batches=2",
         "baseline=false", "callbacks.progress_bar=null", "hydra.run.dir={out}"), expects=("metrics.json",),
    ),
    "python train.py data.data_dir=/data/xquad-r data.source.split.folds=5 data.source.split.fold=0 "
    "data.source.negatives=data/mined/xquad_r_fold0.jsonl data.num_hard_negatives=1": Run(TINY_TRAIN, expects=("metrics.json",)),
    "python mine_negatives.py input=data/mined/xquad_r_fold0.jsonl out=data/mined/xquad_r_fold0.trained.jsonl num_negatives=3 "
    '"rank_range=[3,50]" max_score_ratio=0.95 model.name_or_path=outputs/train/<time>/model': Run(
        ("out={out}/trained.jsonl", "hydra.run.dir={out}/run"), expects=("trained.jsonl", "trained.mine.json")
    ),
    "for t in 1 2; do OMP_NUM_THREADS=$t python benchmarks/mine_speed.py --languages en de --max-articles 20 --rounds 5 "
    "--threads $t; done": Skip(
        "a benchmark: minutes of CPU with the bundled model; tests/test_mine_negatives.py checks what it compares"
    ),
    # docs/results.md
    "python train.py -m experiment=sampler_comparison_cv data.data_dir=../shared/data/xquad-r": Skip(
        "with the test's overrides the same run as README's `python train.py -m experiment=sampler_comparison_cv`"
    ),
    "python -m hybatch.report <the multirun folder>": Skip(
        "README's `python -m hybatch.report multirun/sampler_comparison/<time>` runs the report on a real sweep; "
        "tests/test_report_uncertainty.py covers the fold pooling"
    ),
    "for f in 0 1 2 3 4; do python mine_negatives.py input=xquad_r_split data.data_dir=../shared/data/xquad-r "
    "data.source.split.folds=5 data.source.split.fold=$f out=data/mined/fold$f.jsonl num_negatives=3; for s in 1 2; do "
    "python train.py experiment=sampler_comparison_cv data.data_dir=../shared/data/xquad-r seed=$s sampler=hybrid "
    "data.source.split.fold=$f baseline=false hydra.run.dir=outputs/mined/none/seed$s/fold$f; for n in 1 3; do python train.py "
    "experiment=sampler_comparison_cv data.data_dir=../shared/data/xquad-r seed=$s sampler=hybrid data.source.split.fold=$f "
    "data.source.negatives=data/mined/fold$f.jsonl data.num_hard_negatives=$n baseline=false "
    "hydra.run.dir=outputs/mined/n$n/seed$s/fold$f; done; done; done": Skip(
        "5 minings (~3 min each) and 30 default-size runs (~4-7 min each) on CPU; docs/mining.md's commands run the "
        "same mining and data.source.negatives paths with model=tiny"
    ),
    "python -m hybatch.report.compare outputs/mined/n3 outputs/mined/n1 outputs/mined/none --sampler hybrid "
    "--labels N=3 N=1 none --plot docs/mined_negatives.png": Skip(
        "needs the training runs above; tests/test_report_uncertainty.py compares synthetic runs, --plot included"
    ),
    "python -m hybatch.report.compare outputs/mined/n3 outputs/mined/n1 outputs/mined/none --sampler hybrid "
    "--labels N=3 N=1 none --seeds 1": Skip(
        "needs the training runs above; tests/test_report_uncertainty.py compares synthetic runs, --seeds included"
    ),
    "python evaluate.py +experiment=low_resource benchmark.benchmarks.mteb.max_sentences=300": Skip(
        "NTREX mining in 35 languages with the bundled model: ~5 min of CPU; tests/test_mteb.py evaluates NTREX files"
    ),
    "python evaluate.py +experiment=low_resource benchmark.benchmarks.mteb.max_sentences=300 "
    "model.name_or_path=<training run>/model": Skip("the same, on a trained model's folder"),
    "python -m hybatch.report.low_resource <folder of the evaluation runs>": Skip(
        "tests/test_mteb.py::test_low_resource_report runs the report on evaluation runs"
    ),
    "python train.py seed=1 interpolation=wise_ft data.data_dir=../shared/data/xquad-r": Skip(
        "with the test's overrides the same run as README's `python train.py interpolation=wise_ft`"
    ),
}


def command_lines(block: str, tag: str) -> list[str]:
    """The commands of one fenced block, by the rule in the module docstring."""
    commands, pending, compound, depth = [], "", [], 0
    for raw in block.splitlines():
        line = raw.strip()
        if tag == "console":
            if not line.startswith("$ ") and not pending:
                continue
            line = line.removeprefix("$ ")
        line = pending + line
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        line = re.sub(r"\s+#(\s.*)?$", "", line).strip()
        if not line or line.startswith("#"):
            continue
        if not compound and tag == "" and not (line.startswith(COMMAND_WORDS) or re.match(r"[A-Z_][A-Z0-9_]*=\S+ ", line)):
            continue
        depth += len(re.findall(OPENS, line)) - len(re.findall(CLOSES, line))
        compound.append(" ".join(line.split()))
        if depth <= 0:
            # A loop / if over several lines is one command: `for x in a b; do cmd $x; done`.
            commands.append("".join(part + ("" if i == len(compound) - 1 else " " if re.search(r"\b(do|then|else)$", part) else "; ")
                                    for i, part in enumerate(compound)))
            compound, depth = [], 0
    return commands


def documented_commands() -> dict[str, list[str]]:
    """Command -> the documents that have it, in the order of DOCS."""
    found: dict[str, list[str]] = {}
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for match in re.finditer(r"^(```|~~~)[ \t]*([\w+-]*)[^\n]*\n(.*?)^\1[ \t]*$", text, re.M | re.S):
            tag = match.group(2).lower()
            if tag in SHELL_TAGS or tag in ("console", ""):
                for command in command_lines(match.group(3), "bash" if tag in SHELL_TAGS else tag):
                    found.setdefault(command, []).append(doc.relative_to(REPO).as_posix())
    return found


DOCUMENTED = documented_commands()


def test_every_documented_command_is_in_the_table():
    missing = [c for c in DOCUMENTED if c not in COMMANDS]
    stale = [c for c in COMMANDS if c not in DOCUMENTED]
    assert not missing, "documented commands missing from COMMANDS in tests/test_docs_commands.py (add a Run or Skip):\n" + (
        "\n".join(f"  {c!r}  ({', '.join(DOCUMENTED[c])})" for c in missing)
    )
    assert not stale, "COMMANDS rows no document has any more (remove them):\n" + "\n".join(f"  {c!r}" for c in stale)


def test_the_collector_follows_its_rule():
    block = "$ python train.py \\\n    seed=1   # a comment\noutput line\n# only a comment\n$ ruff check ."
    assert command_lines(block, "console") == ["python train.py seed=1", "ruff check ."]
    untagged = "python evaluate.py\nsome output\nHYBATCH_CACHE=/tmp/x python a.py --n 2"
    assert command_lines(untagged, "") == ["python evaluate.py", "HYBATCH_CACHE=/tmp/x python a.py --n 2"]
    loop = "for s in a b; do\n  python p.py source=$s\ndone\npython q.py"
    assert command_lines(loop, "bash") == ["for s in a b; do python p.py source=$s; done", "python q.py"]
    assert python_argv("python evaluate.py 'b.l=[a,b]' \"x=range(0,2)\"") == ["evaluate.py", "b.l=[a,b]", "x=range(0,2)"]
    assert python_argv("python -m hybatch.report d") == ["-m", "hybatch.report", "d"]
    for shell in ("X=1 python a.py", "ruff check . && python -m pytest", "for s in a; do python p.py s=$s; done", "hybatch-search x"):
        assert python_argv(shell) is None, shell


def python_argv(line: str) -> list[str] | None:
    """The arguments after `python` of a plain `python ...` line; None where the line needs a shell
    (another program, an operator, an expansion)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)
    if words[0] not in ("python", "python3") or any(set(w) <= set("();<>|&") or "$" in w or "`" in w for w in words):
        return None
    return words[1:]


class Runner:
    """Runs every Run row once, two at a time (the CI machine has 2 cores; each command is mostly one
    process); a producer starts before the commands that use its placeholder. A plain `python ...`
    line runs as `helpers.run_python` (forked from a process that has imported torch and Lightning:
    the same command without ~10 s of imports), any other line through bash."""

    def __init__(self, root: Path, xquad_r: Path, env: dict[str, str]) -> None:
        self.root, self.xquad_r, self.env = root, xquad_r, env
        self.producers = {row.produces: command for command, row in COMMANDS.items() if isinstance(row, Run) and row.produces}
        runs = [c for c in DOCUMENTED if isinstance(COMMANDS.get(c), Run)]
        ordered = [c for c in runs if c in self.producers.values()] + [c for c in runs if c not in self.producers.values()]
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.results: dict[str, Future[Path]] = {}
        for number, command in enumerate(ordered):  # producers first: a consumer never waits on a queued one
            self.results[command] = self.pool.submit(self._run, command, root / f"{number:02d}")

    def result(self, command: str) -> Path:
        return self.results[command].result()

    def _run(self, command: str, out: Path) -> Path:
        row = COMMANDS[command]
        assert isinstance(row, Run)
        values = {"{xquad_r}": str(self.xquad_r), "{out}": str(out)}

        def fill(text: str) -> str:  # not str.format: commands may hold braces of their own
            for name, value in values.items():
                text = text.replace(name, value)
            return text

        line = command
        for placeholder, producer in self.producers.items():
            if placeholder in line and producer != command:
                try:
                    line = line.replace(placeholder, str(self.result(producer)))
                except AssertionError as err:
                    raise AssertionError(f"{placeholder} comes from `{producer}`, which failed") from err
        for text, value in row.replace.items():
            assert text in line, f"{text!r} is not in {command!r}: update its row"
            line = line.replace(text, fill(value))
        for text, value in PLACEHOLDERS.items():
            line = line.replace(text, fill(value))
        line = " ".join([line, *(shlex.quote(fill(o)) for o in row.overrides)])
        started = time.monotonic()
        argv = python_argv(line)
        if argv is None:
            proc = subprocess.run(["bash", "-c", line], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=600)
            code, output = proc.returncode, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        else:
            code, output = run_python(argv, REPO, self.env, out.parent / f"{out.name}.log")
            output = output[-9000:]
        print(f"{time.monotonic() - started:6.1f}s  {line}")
        assert code == 0, f"`{line}` exited {code}:\n{output}"
        missing = [p for p in row.expects if not (out / p).exists()]
        assert not missing, f"`{line}` did not write {missing} into {out}"
        return out


@pytest.fixture(scope="session")
def runner(tmp_path_factory, xquad_r_dir, cache_dir) -> Iterator[Runner]:
    # One torch thread per command: two commands run at once on the 2 cores, on a tiny model.
    env = {**os.environ, "HYBATCH_CACHE": str(cache_dir), "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    runner = Runner(tmp_path_factory.mktemp("docs-commands"), xquad_r_dir, env)
    yield runner
    runner.pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("command", list(DOCUMENTED))
def test_documented_command_runs(command: str, runner: Runner):
    row = COMMANDS.get(command)
    if row is None:
        pytest.fail(f"not in COMMANDS (tests/test_docs_commands.py): {command!r}")
    if isinstance(row, Skip):
        pytest.skip(row.reason)
    runner.result(command)
