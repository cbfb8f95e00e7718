"""Resume without loss: a run killed (SIGKILL) after a checkpoint and resumed with `ckpt_path=last`
ends with the same weights and metrics.json as the same run uninterrupted, bit for bit on CPU.
Checkpoints are written atomically and hold tensors and plain values only."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ForkedPython

from hybatch.callbacks import _rng_states, _set_rng_states
from hybatch.data.corpus import ParallelCorpus, ParallelExample, Translation
from hybatch.datamodule import PairDataset, ResumableDataLoader
from hybatch.encoder.checkpoints import AtomicCheckpointIO, load_tensors_only
from hybatch.samplers import HybridBatchSampler
from hybatch.training import resolve_ckpt_path

REPO = Path(__file__).resolve().parents[1]

# A test-only callback: blocks the run at the start of step `step`, once the checkpoint of the step
# before is on disk, and says so through `marker`; the test then kills the process.
PAUSE = '''
import time
from pathlib import Path
from lightning.pytorch.callbacks import Callback

class PauseAt(Callback):
    def __init__(self, step, marker):
        self.step, self.marker = step, Path(marker)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            self.marker.write_text(str(self.step))
            time.sleep(3600)
'''


def train_args(xquad_r_dir, run_dir):
    # 290 training pairs / 32 = 9 steps per epoch: the run validates after step 9 and stops at 15.
    return [
        "model=tiny", f"data.data_dir={xquad_r_dir}", "data.languages=[en,de,ar]", "data.source.languages=[en,de,ar]",
        "data.source.max_articles=12", "data.batch_size=32", "trainer.max_steps=15", "trainer.max_epochs=3",
        "checkpoint_every_n_steps=4", "callbacks.progress_bar=null", "baseline=false", f"hydra.run.dir={run_dir}",
    ]


def start(args, env, log: Path) -> ForkedPython:
    return ForkedPython(["train.py", *args], REPO, env, log)


def finish(proc: ForkedPython, log: Path) -> None:
    assert proc.wait(timeout=600) == 0, log.read_text()[-5000:]


def kill_at(step: int, args, env, tmp_path: Path) -> None:
    """Run until the start of `step`, then SIGKILL: nothing gets a chance to clean up."""
    marker = tmp_path / f"paused-{step}"
    log = tmp_path / f"killed-{step}.log"
    proc = start([*args, "+callbacks.pause._target_=hb_pause.PauseAt", f"+callbacks.pause.step={step}", f"+callbacks.pause.marker={marker}"], env, log)
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert proc.poll() is None, f"the run ended before step {step}:\n" + log.read_text()[-5000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def test_killed_and_resumed_run_ends_like_the_uninterrupted_one(tmp_path, xquad_r_dir, cache_dir):
    """Killed twice: in step 10 (last.ckpt: the end of epoch 0, after validation) and in step 13
    (last.ckpt: the step checkpoint of step 12, mid-epoch 1); each time resumed with ckpt_path=last.
    The reference runs alongside; one thread per process, so they do not slow each other down."""
    (tmp_path / "hb_pause.py").write_text(PAUSE)
    env = {
        **os.environ, "HYBATCH_CACHE": str(cache_dir), "PYTHONPATH": str(tmp_path), "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    reference = start(train_args(xquad_r_dir, reference_dir), env, tmp_path / "reference.log")

    args = train_args(xquad_r_dir, resumed_dir)
    last = resumed_dir / "checkpoints" / "last.ckpt"
    kill_at(10, args, env, tmp_path)
    state = load_tensors_only(last)
    assert state["global_step"] == 9 and state["RetrievalDataModule"]["train_loader"] == {
        "epoch": 0, "next_batch": 9, "seed": 42, "global_batch_size": 32, "world_size": 1,
    }
    kill_at(13, [*args, "ckpt_path=last"], env, tmp_path)
    state = load_tensors_only(last)
    assert state["global_step"] == 12 and state["RetrievalDataModule"]["train_loader"]["epoch"] == 1
    assert state["RetrievalDataModule"]["train_loader"]["next_batch"] == 3
    assert not list(last.parent.glob(".*.tmp"))
    resumed_log = tmp_path / "resumed.log"
    finish(start([*args, "ckpt_path=last"], env, resumed_log), resumed_log)
    finish(reference, tmp_path / "reference.log")

    for name in ("model/model.safetensors", "metrics.json"):
        assert (resumed_dir / name).read_bytes() == (reference_dir / name).read_bytes(), name
    metrics = json.loads((resumed_dir / "metrics.json").read_text())
    assert {"train/loss", "val/loss", "val/multi/mAP", "test/multi/mAP"} <= set(metrics)  # val: from before the kill
    assert "resumed with the checkpoint's RNG states" in resumed_log.read_text()


# --- checkpoint files ---------------------------------------------------------------------------
def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    assert io.load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


KILLED_WRITER = '''
import sys, torch
from pathlib import Path
from hybatch.encoder.checkpoints import AtomicCheckpointIO
path, ready = Path(sys.argv[1]), Path(sys.argv[2])
io = AtomicCheckpointIO()
for step in range(10**6):
    io.save_checkpoint({"step": step, "w": torch.full((4_000_000,), float(step))}, path)
    ready.touch()
'''


def test_a_kill_during_a_save_never_leaves_a_corrupt_checkpoint(tmp_path):
    path, ready = tmp_path / "last.ckpt", tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(ready)])
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # saves of 16 MB follow each other: the kill lands in one
    finally:
        proc.kill()
        proc.wait()
    state = load_tensors_only(path)
    assert torch.equal(state["w"], torch.full((4_000_000,), float(state["step"])))
    AtomicCheckpointIO().save_checkpoint({"step": -1}, path)  # the next save clears a killed save's temp file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "ready"]


def test_resolve_ckpt_path(tmp_path):
    assert resolve_ckpt_path(None, tmp_path) is None
    assert resolve_ckpt_path("last", tmp_path) is None  # a first run starts from scratch
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert resolve_ckpt_path("last", tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(FileNotFoundError, match="ckpt_path='/no/such.ckpt' does not exist"):
        resolve_ckpt_path("/no/such.ckpt", tmp_path)


# --- what resuming restores ----------------------------------------------------------------------
def test_rng_states_survive_a_tensors_only_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal()  # a cached Gaussian in numpy's state
    AtomicCheckpointIO().save_checkpoint({"rng": _rng_states()}, tmp_path / "rng.ckpt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    _set_rng_states(load_tensors_only(tmp_path / "rng.ckpt")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def make_loader(epoch: list[int], progress: list[int]) -> ResumableDataLoader:
    corpus = ParallelCorpus([ParallelExample(str(i), "qa", {lang: Translation("q", "p") for lang in ("en", "de")}) for i in range(40)])
    sampler = HybridBatchSampler(corpus.groups(["en", "de"]), batch_size=8, seed=5)
    return ResumableDataLoader(
        PairDataset(corpus), batch_sampler=sampler, collate_fn=lambda rows: [r["id"] for r in rows],
        progress=lambda: progress[0], epoch=lambda: epoch[0],
    )


def test_loader_restores_its_position_then_starts_each_epoch_afresh():
    epoch = [0]
    reference = make_loader(epoch, [0])
    epoch_0 = list(reference)
    epoch[0] = 1
    epoch_1 = list(reference)
    assert len(epoch_0) == 5 and epoch_0 != epoch_1

    resumed = make_loader([0], [0])
    resumed.load_state_dict({**reference.state_dict(), "epoch": 1, "next_batch": 3})
    assert list(resumed) == epoch_1[3:]
    assert list(resumed) == epoch_0  # the next iterator: the epoch Lightning is in, from its start
    resumed.load_state_dict({**reference.state_dict(), "epoch": 0, "next_batch": 5})  # epoch 0 fully processed
    assert list(resumed) == epoch_1
