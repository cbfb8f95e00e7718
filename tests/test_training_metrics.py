"""In-batch accuracy and MRR as torchmetrics Metrics: exact values, synchronised over 2 gloo processes
(each rank's slice of the gathered logits counted once), logged through Lightning's `log_dict`."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hybatch.training_metrics import InBatchAccuracy, InBatchMRR, in_batch_metrics, local_rows

WORLD = 2


def reference(batches: list[torch.Tensor]) -> dict[str, float]:
    """Mean over every query of every batch of [positive first] and 1 / positive's rank (ties: favourable)."""
    hits, rr = [], []
    for logits in batches:
        for i, row in enumerate(logits.tolist()):
            rank = 1 + sum(v > row[i] for v in row)
            hits.append(float(rank == 1))
            rr.append(1 / rank)
    return {"accuracy": sum(hits) / len(hits), "mrr": sum(rr) / len(rr)}


def batches(seed: int = 0) -> list[torch.Tensor]:
    """Square logits (query i's positive in column i) plus hard-negative columns, one masked entry, a tie."""
    gen = torch.Generator().manual_seed(seed)
    out = [torch.randn(b, b + 2, generator=gen) for b in (6, 6, 4)]
    out[0][1, 0] = float("-inf")  # a masked false negative
    out[1][2, 5] = out[1][2, 2]  # a tie with the positive counts in its favour
    return out


def test_values_equal_the_reference_and_reset():
    metrics = in_batch_metrics("val/")
    for logits in batches():
        metrics.update(logits)
    got = {k: float(v) for k, v in metrics.compute().items()}
    want = reference(batches())
    assert got == pytest.approx({f"val/{k}": v for k, v in want.items()}, abs=1e-6)
    assert 0 < want["accuracy"] < 1
    metrics.reset()
    metrics.update(torch.eye(3))
    assert {k: float(v) for k, v in metrics.compute().items()} == {"val/accuracy": 1.0, "val/mrr": 1.0}


def test_targets_and_bad_input():
    acc, mrr = InBatchAccuracy(), InBatchMRR()
    logits = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.2, 0.4]])
    for m in (acc, mrr):
        m.update(logits, torch.tensor([1, 0]))
    assert float(acc.compute()) == pytest.approx(0.5) and float(mrr.compute()) == pytest.approx((1 + 1 / 2) / 2)
    with pytest.raises(ValueError, match=r"expected one column in \[0, 3\)"):
        acc.update(logits, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="expected a \\(queries, candidates\\) matrix"):
        acc.update(torch.zeros(3))
    rows, targets = local_rows(logits, 2)
    assert rows is logits and targets.tolist() == [0, 1]
    with pytest.raises(ValueError, match="logits have 2 rows: expected the 3 local queries"):
        local_rows(logits, 3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        metrics = in_batch_metrics()
        for logits in batches():  # the gathered loss's logits: the same global matrix on every rank
            metrics.update(*local_rows(logits, logits.shape[0] // WORLD))
        torch.save({k: float(v) for k, v in metrics.compute().items()}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_synchronised_across_two_processes(tmp_path):
    # fork: the workers inherit the imported torchmetrics instead of importing it again (seconds each).
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="fork")
    want = reference(batches())
    for rank in range(WORLD):  # every rank gets the value over all queries of both ranks
        assert torch.load(tmp_path / f"rank{rank}.pt") == pytest.approx(want, abs=1e-6)


def test_logged_through_lightning_log_dict():
    """The wiring lightning_module.py uses: update in the step, `log_dict(metric collection)`, Lightning computes at epoch end."""
    import lightning.pytorch as pl

    data = batches(1)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.metrics = torch.nn.ModuleDict({"val": in_batch_metrics("val/")})

        def validation_step(self, batch, batch_idx):
            logits = batch[0]
            self.metrics["val"].update(*local_rows(logits, logits.shape[0]))
            self.log_dict(self.metrics["val"], batch_size=logits.shape[0])

    loader = torch.utils.data.DataLoader([(x,) for x in data], batch_size=None)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    (logged,) = trainer.validate(Module(), loader, verbose=False)
    assert logged == pytest.approx({f"val/{k}": v for k, v in reference(data).items()}, abs=1e-6)
