"""Helpers shared by several test modules (fixtures live in conftest.py); no test module imports another."""

from __future__ import annotations

import atexit
import json
import multiprocessing
import os
import runpy
import socket
import subprocess
import sys
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import pytrec_eval
import torch
import torch.nn.functional as F
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch import Tensor, nn

from hybatch.config import CONFIG_DIR
from hybatch.data.lareqa_benchmarks import (
    Candidate,
    LareqaBenchmark,
    LareqaLanguage,
    Question,
    build_lareqa_benchmark,
)
from hybatch.run_outputs import write_metrics, write_run_info

REPO = Path(__file__).resolve().parents[1]
REQUIRE_SHARED_DATA = os.environ.get("HYBATCH_REQUIRE_SHARED_DATA") == "1"


def missing_shared_data(message: str) -> None:
    """Skip the test, or fail it under HYBATCH_REQUIRE_SHARED_DATA=1 (set by .ci/run: CI must not pass
    having run fewer tests than it seems); every missing-data skip goes through here."""
    if REQUIRE_SHARED_DATA:
        pytest.fail(f"{message}; HYBATCH_REQUIRE_SHARED_DATA=1 makes missing shared data a failure", pytrace=False)
    pytest.skip(message)


class HashEncoder:
    """Deterministic bag of character trigrams hashed into `dim` signed buckets; records its calls as
    `(role, texts)`. With `fail_after`, the call after that many raises KeyboardInterrupt (an interrupted run)."""

    def __init__(self, dim: int = 64, fail_after: int | None = None) -> None:
        self.dim, self.fail_after = dim, fail_after
        self.calls: list[tuple[str, list[str]]] = []

    def encode(self, texts, role, batch_size: int = 64, progress: bool = True) -> Tensor:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt
        self.calls.append((role, list(texts)))
        out = torch.zeros(len(texts), self.dim)
        for i, text in enumerate(texts):
            padded = f"  {text.lower()} "
            for j in range(len(padded) - 2):
                h = zlib.crc32(padded[j : j + 3].encode())
                out[i, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
        out[:, 0] += 1e-3  # no all-zero rows
        return F.normalize(out, dim=1)


def trec_eval_ranks(row: Tensor, members: Sequence[int], relevant: Sequence[int]) -> list[int]:
    """Rank (1 = best) of each `relevant` item among `members` by `row[j]`, as trec_eval orders a run.

    An outside reference for the kernel's pessimistic ranks: trec_eval breaks score ties by document
    name, descending, so the names here put a tied non-relevant item before a relevant one ("z" > "r")
    and tied relevant items in `relevant`'s order. One trec_eval query per relevant item, judged
    relevant alone: 1 / its reciprocal rank is its position in the whole ranking.
    """
    position = {j: p for p, j in enumerate(relevant)}
    name = {j: f"r{len(relevant) - position[j]:06d}" if j in position else f"z{j:06d}" for j in members}
    run = {str(p): {name[j]: float(row[j]) for j in members} for p in range(len(relevant))}
    qrels = {str(p): {name[j]: 1} for p, j in enumerate(relevant)}
    result = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)
    return [round(1 / result[str(p)]["recip_rank"]) for p in range(len(relevant))]


def write_lareqa(path: Path, title: str, paragraphs: list[tuple[list[str], list[tuple[str, str, int]]]]) -> None:
    """A LAReQA-format file of one article; paragraphs: (sentences, [(qid, question, answer sentence index)])."""
    out = []
    for sentences, qas in paragraphs:
        breaks, pos = [], 0
        for s in sentences:
            breaks.append([pos, pos + len(s)])
            pos += len(s) + 1
        out.append(
            {
                "context": " ".join(sentences),
                "sentences": sentences,
                "sentence_breaks": breaks,
                "qas": [
                    {"id": qid, "question": text, "answers": [{"text": sentences[a][:5], "answer_start": breaks[a][0] + 1}]}
                    for qid, text, a in qas
                ],
            }
        )
    path.write_text(json.dumps({"version": "1.0", "data": [{"title": title, "paragraphs": out}]}), encoding="utf-8")


def random_benchmark(seed: int = 3, langs: Sequence[str] = ("en", "de", "ar")) -> tuple[LareqaBenchmark, Tensor, Tensor]:
    """A small random LAReQA benchmark (two answers per paragraph shared across languages) and random
    question / candidate embeddings for it."""
    gen = torch.Generator().manual_seed(seed)
    data = {}
    for li, lang in enumerate(langs):
        n_cand = 5 + 2 * li
        cands = [Candidate(lang, f"A{p % 2}", p, 0, f"{lang}-{p}", "") for p in range(n_cand)]
        qs = [Question(f"q{k}", lang, f"{lang} q{k}", f"A{k % 2}", 2 * int(torch.randint(0, n_cand // 2, (1,), generator=gen)) + k % 2)
              for k in range(8) if torch.rand(1, generator=gen) < 0.8]
        data[lang] = LareqaLanguage(lang, qs, cands)
    bench = build_lareqa_benchmark("rand", data)
    return bench, torch.randn(len(bench.questions), 6, generator=gen), torch.randn(len(bench.candidates), 6, generator=gen)


# --- a tiny encoder and inputs for the loss tests ----------------------------------------------------------

VOCAB, DIM, SEQ = 50, 16, 6


class TinyEncoder(nn.Module):
    """Mean-pooled embeddings + projection, with dropout at both places so masks matter."""

    def __init__(self, dropout: float = 0.3) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.dropout(self.embed(input_ids)) * mask).sum(1) / mask.sum(1)
        return self.proj(self.dropout(torch.tanh(pooled)))


def make_inputs(n: int, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, SEQ + 1, (n,), generator=g)
    return {
        "input_ids": torch.randint(VOCAB, (n, SEQ), generator=g),
        "attention_mask": (torch.arange(SEQ) < lengths[:, None]).long(),
    }


def encoder(dropout: float = 0.3) -> TinyEncoder:
    torch.manual_seed(0)
    return TinyEncoder(dropout)


def grads(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_grads_close(got: dict[str, Tensor], want: dict[str, Tensor]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-5, msg=name)


def free_port() -> int:
    """A TCP port free now on 127.0.0.1, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- `python <script> ...` without paying the imports each time ---------------------------------------------

# A `python train.py ...` spends ~10 s of CPU importing torch, Lightning and transformers before it does
# anything. The tests run their scripts in processes forked from a server that imported those modules
# once: each is still its own process, with the script's argv, environment and working directory.
PRELOAD = [
    "torch", "lightning.pytorch", "transformers", "sentence_transformers", "matplotlib.pyplot",
    "hybatch.cli", "hybatch.training", "hybatch.evaluation.runner",
]  # fmt: skip
_FORKSERVER = multiprocessing.get_context("forkserver")
_FORKSERVER.set_forkserver_preload(PRELOAD)


def _exec_python(args: list[str], cwd: str, env: dict[str, str], log: str) -> None:
    """In the forked child: what `python *args` does when started from `cwd` with exactly `env`."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    # Python puts the script's folder (with -m: the working directory) and PYTHONPATH first on the path.
    first = cwd if args[0] == "-m" else os.path.dirname(os.path.abspath(args[0]))
    sys.path[:0] = [first, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    if "OMP_NUM_THREADS" in env:
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))  # read at import, which happened in the server
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1)
    os.dup2(out, 2)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)
    try:
        if args[0] == "-m":
            sys.argv = args[1:]  # run_module sets argv[0] to the module's file
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(args)
            runpy.run_path(args[0], run_name="__main__")
    finally:
        atexit._run_exitfuncs()  # multiprocessing leaves with os._exit, which would skip them


class ForkedPython:
    """`python *args` started in a forked process; the part of `subprocess.Popen` the tests use."""

    def __init__(self, args: Sequence[str], cwd: str | os.PathLike, env: Mapping[str, str], log: str | os.PathLike) -> None:
        self.args = list(args)
        self.log = Path(log)
        self._process = _FORKSERVER.Process(target=_exec_python, args=(self.args, str(cwd), dict(env), str(log)))
        self._process.start()
        self.pid = self._process.pid

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(["python", *self.args], timeout)
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        self._process.kill()


def run_python(args: Sequence[str], cwd: str | os.PathLike, env: Mapping[str, str], log: str | os.PathLike,
               timeout: float = 600) -> tuple[int, str]:
    """Run `python *args` to the end (killed after `timeout` s); its exit code and its output."""
    proc = ForkedPython(args, cwd, env, log)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return code, Path(log).read_text(errors="replace")


# --- a run folder as train.py leaves it, for the model card and publish tests ---------------------
CARD_OVERRIDES = ["sampler=hybrid", "sampler.alpha=0.3", "data.languages=[en,de]", "data.batch_size=8"]


def run_metrics() -> dict[str, float]:
    out = {"composition/batches": 29.0, "composition/mono_fraction": 0.3448275862068966, "composition/mono/en": 6.0,
           "composition/mono/de": 4.0, "composition/cross/query/en": 150.0, "composition/cross/query/de": 154.0,
           "composition/cross/passage/en": 154.0, "composition/cross/passage/de": 150.0, "test/loss": 0.7,
           "miracl/de/nDCG@10": 0.51234, "val/multi/mAP": 0.5}  # fmt: skip
    for prefix, shift in (("test/", 0.0), ("baseline/test/", -0.05)):
        out.update({f"{prefix}mono/mAP": 0.81234567 + shift, f"{prefix}cross/mAP": 0.70123456 + shift,
                    f"{prefix}multi/mAP": 0.61111111 + shift, f"{prefix}mono/R@1": 0.75, f"{prefix}cross/R@1": 0.6,
                    f"{prefix}multi/R@10": 0.9, f"{prefix}multi/lang_bias": 123.456 - 100 * shift,
                    f"{prefix}multi/en/mAP": 0.6, f"{prefix}multi/de/mAP": 0.62})  # fmt: skip
    return out


def make_run(root: Path, model: str = "tiny", extra: tuple[str, ...] = ()) -> Path:
    """What train.py leaves, minus the weights (the card reads only the files below)."""
    GlobalHydra.instance().clear()
    overrides = [f"model={model}", *CARD_OVERRIDES, *extra, f"paths.output_dir={root}"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    write_run_info(cfg, root)
    write_metrics(root / "metrics.json", run_metrics())
    (root / ".hydra").mkdir()
    (root / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides[:-1]))
    (root / "split.json").write_text(json.dumps({"train": ["A", "B", "C"], "val": ["D"], "test": ["E"]}))
    (root / "model").mkdir()
    settings = {"pooling": "mean", "normalize": True, "query_prefix": "query: ", "passage_prefix": "passage: ",
                "query_max_length": 64, "passage_max_length": 128, "separate_towers": False}  # fmt: skip
    (root / "model" / "hybatch_encoder.json").write_text(json.dumps(settings))
    return root
