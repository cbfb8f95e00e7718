"""Data-parallel training through train.py and Lightning with `trainer=ddp_cpu` (2 gloo processes).

Two ranks with local batch B must behave like one process with batch 2B: the same batch type and
language(s) on every rank at every step, together the single process's examples, and (dropout off) the
same loss and gradients, with the plain and with the cached contrastive loss.

`RecordingModule` is what the runs train: `train.py module._target_=test_distributed.RecordingModule`
(this directory is put on PYTHONPATH, so that Lightning's DDP child process imports it too).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import ForkedPython, run_python
from hydra import compose, initialize_config_dir
from torch import Tensor, nn

from hybatch.config import CONFIG_DIR
from hybatch.encoder import DualEncoder
from hybatch.lightning_module import DualEncoderModule
from hybatch.loss import ContrastiveLoss, ContrastiveOutput
from hybatch.training import run_training

REPO = Path(__file__).resolve().parents[1]
LOCAL_BATCH, STEPS, SEED, CHUNK = 4, 5, 3, 3
# Tensors with more rows than this (the word embeddings) are recorded as their non-zero rows only.
_DENSE_ROWS = 10_000


class _RecordingLoss(ContrastiveLoss):
    """Remembers the loss of its last call: the training step's (validation is off in these runs)."""

    last: Tensor | None = None

    def forward(self, queries: Tensor, positives: Tensor, *rest: Tensor | None) -> ContrastiveOutput:
        out = super().forward(queries, positives, *rest)
        self.last = out.loss.detach().clone()
        return out


def _compact(grad: Tensor) -> dict[str, Any]:
    if grad.ndim == 2 and grad.shape[0] > _DENSE_ROWS:
        rows = grad.abs().sum(1).nonzero().flatten()
        return {"shape": tuple(grad.shape), "rows": rows, "values": grad[rows].clone()}
    return {"dense": grad.detach().clone()}


def _dense(record: dict[str, Any]) -> Tensor:
    if "dense" in record:
        return record["dense"]
    return torch.zeros(record["shape"]).index_copy_(0, record["rows"], record["values"])


class RecordingModule(DualEncoderModule):
    """`DualEncoderModule` with dropout off that writes, per rank and step, its batch, loss and the
    gradients the optimiser is about to apply (all-reduced under DDP) to `record_dir/rank{r}.pt`."""

    def __init__(self, encoder: DualEncoder, record_dir: str, **kwargs: Any) -> None:
        super().__init__(encoder, **kwargs)
        for module in self.encoder.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        self.loss_fn = _RecordingLoss(self.loss_fn.temperature, self.loss_fn.gather)
        self.record_dir = Path(record_dir)
        self.records: list[dict[str, Any]] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        self.records.append(
            {
                "ids": list(batch["ids"]),
                "query_lang": list(batch["query_lang"]),
                "passage_lang": list(batch["passage_lang"]),
                "negatives": int(batch["negatives"]["input_ids"].shape[0]) if "negatives" in batch else 0,
            }
        )
        return super().training_step(batch, batch_idx)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.records[-1]["loss"] = float(self.loss_fn.last)
        self.records[-1]["grads"] = {n: _compact(p.grad) for n, p in self.encoder.named_parameters() if p.grad is not None}
        super().on_before_optimizer_step(optimizer)

    def on_train_end(self) -> None:
        torch.save(self.records, self.record_dir / f"rank{self.global_rank}.pt")


def _overrides(xquad_r_dir: Path, out: Path, trainer: str, batch_size: int, *extra: str) -> list[str]:
    langs = "[en,de,ar]"
    return [
        "model=tiny", "data=xquad_r_split", f"data.data_dir={xquad_r_dir}", f"data.languages={langs}",
        f"data.source.languages={langs}", "data.source.max_articles=12", f"data.batch_size={batch_size}",
        "data.num_hard_negatives=1", "sampler=hybrid", "sampler.alpha=0.5", f"seed={SEED}", f"trainer={trainer}",
        f"trainer.max_steps={STEPS}", "+trainer.limit_val_batches=0", "+trainer.enable_checkpointing=false",
        "~callbacks", "~logger", "module._target_=test_distributed.RecordingModule", f"+module.record_dir={out}",
        "module.lr=0.0", "test=false", "export_model=false", "baseline=false", "optimized_metric=null", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, xquad_r_dir: Path, cache_dir: Path) -> dict[str, list[list[dict]]]:
    """Per run, per rank, per step records: 2 ranks x B through `train.py trainer=ddp_cpu` (plain and
    cached loss, run concurrently in the background), and 1 process x 2B through `run_training` here.

    lr=0 keeps the weights fixed, so every step compares gradients at the same point; one thread per
    process keeps the concurrent runs from slowing each other down."""
    env = {
        **os.environ,
        "HYBATCH_CACHE": str(cache_dir),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    procs, dirs = {}, {}
    for name, extra in (("ddp", []), ("ddp_cached", [f"module.grad_cache_chunk_size={CHUNK}"])):
        dirs[name] = out = tmp_path_factory.mktemp(name)
        args = ["train.py", *_overrides(xquad_r_dir, out, "ddp_cpu", LOCAL_BATCH, *extra), f"hydra.run.dir={out}"]
        procs[name] = ForkedPython(args, REPO, env, out.with_suffix(".log"))

    dirs["single"] = out = tmp_path_factory.mktemp("single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=[*_overrides(xquad_r_dir, out, "cpu", 2 * LOCAL_BATCH), f"paths.output_dir={out}"])
        run_training(cfg)
    finally:
        torch.set_num_threads(threads)

    for name, proc in procs.items():
        assert proc.wait(timeout=600) == 0, f"{name}:\n{proc.log.read_text()[-6000:]}"
    return {
        name: [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(1 if name == "single" else 2)]
        for name, out in dirs.items()
    }


def _kind(record: dict[str, Any]) -> str:
    pairs = set(zip(record["query_lang"], record["passage_lang"]))
    if all(q == p for q, p in pairs):
        langs = {q for q, _ in pairs}
        assert len(langs) == 1, f"a monolingual batch mixes languages {sorted(langs)}"
        return f"mono:{langs.pop()}"
    assert all(q != p for q, p in pairs), f"a batch mixes monolingual and cross-lingual pairs: {sorted(pairs)}"
    return "cross"


@pytest.mark.parametrize("run", ["ddp", "ddp_cached"])
def test_ranks_see_the_same_batch_type_and_together_the_single_process_batch(runs: dict, run: str) -> None:
    rank0, rank1 = runs[run]
    (single,) = runs["single"]
    assert len(rank0) == len(rank1) == len(single) == STEPS
    kinds = []
    for step, (a, b, whole) in enumerate(zip(rank0, rank1, single, strict=True)):
        assert _kind(a) == _kind(b) == _kind(whole), f"step {step}: {_kind(a)} / {_kind(b)} / {_kind(whole)}"
        for key in ("ids", "query_lang", "passage_lang"):
            assert a[key] + b[key] == whole[key], f"step {step}: {key}"
        assert a["negatives"] + b["negatives"] == whole["negatives"]
        kinds.append(_kind(a).split(":")[0])
    # The seed gives both batch types, so agreement is checked for each.
    assert set(kinds) == {"mono", "cross"}, kinds


@pytest.mark.parametrize("run", ["ddp", "ddp_cached"])
def test_two_ranks_match_one_process_with_the_global_batch(runs: dict, run: str) -> None:
    (single,) = runs["single"]
    for rank, records in enumerate(runs[run]):
        for step, (got, want) in enumerate(zip(records, single, strict=True)):
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-5), f"rank {rank} step {step}"
            assert got["grads"].keys() == want["grads"].keys()
            for name, grad in want["grads"].items():
                torch.testing.assert_close(
                    _dense(got["grads"][name]), _dense(grad), rtol=1e-5, atol=1e-5, msg=f"rank {rank} step {step} {name}"
                )


def test_slurm_launcher_config_runs_each_sweep_job_on_the_trainer_nodes() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.utils import instantiate

    overrides = ["hydra/launcher=submitit_slurm", "trainer=ddp", "trainer.num_nodes=2", "hydra.launcher.gpus_per_node=4"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    # One SLURM task per GPU on each of the trainer's nodes: what Lightning's SLURM environment expects.
    assert launcher.params["nodes"] == 2 and launcher.params["tasks_per_node"] == 4
    assert launcher.params["submitit_folder"].startswith(str(cfg.hydra.sweep.dir))


def test_local_multirun_trains_with_ddp_spawn(tmp_path: Path, xquad_r_dir: Path, cache_dir: Path) -> None:
    """`-m` with `trainer.strategy=ddp_spawn` (docs/performance.md): fit and test run in fresh worker
    processes, the default CSV logger keeps both phases' columns, and metrics.json holds the test results
    (from the workers) and the baseline's (from the main process)."""
    langs = "[en,de,ar]"
    cmd = [
        "train.py", "-m", "trainer=ddp_cpu", "trainer.strategy=ddp_spawn", "sampler=hybrid", "model=tiny",
        "data=xquad_r_split", f"data.data_dir={xquad_r_dir}", f"data.languages={langs}", f"data.source.languages={langs}",
        "data.source.max_articles=12", "data.batch_size=4", "trainer.max_steps=4", "trainer.log_every_n_steps=1", "trainer.val_check_interval=2",
        "export_model=false", f"hydra.sweep.dir={tmp_path}",
    ]  # fmt: skip
    env = {**os.environ, "HYBATCH_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    code, output = run_python(cmd, REPO, env, tmp_path / "stdout.log")
    assert code == 0, output[-9000:]
    metrics = json.loads((tmp_path / "0" / "metrics.json").read_text())
    assert {"train/loss", "test/multi/mAP", "baseline/test/multi/mAP"} <= set(metrics)
    header = (tmp_path / "0" / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "val/multi/mAP", "test/multi/mAP"} <= set(header)
