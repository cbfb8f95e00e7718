"""The project's Lightning loggers."""

import csv
import pickle

from hybatch.loggers import ProcessSafeCSVLogger


def test_csv_logger_keeps_what_other_processes_wrote(tmp_path):
    """As under ddp_spawn: the main process's logger is pickled into a fit worker and a test worker,
    then logs the results itself; one metrics.csv ends up with every row and every column."""
    logger = ProcessSafeCSVLogger(save_dir=tmp_path, name="csv")
    logger.log_hyperparams({"lr": 1e-3})  # creates the writer in the main process, before the workers
    fit_worker, test_worker = pickle.loads(pickle.dumps(logger)), pickle.loads(pickle.dumps(logger))
    fit_worker.log_metrics({"train/loss": 2.0}, step=0)
    fit_worker.log_metrics({"train/loss": 1.5, "val/mAP": 0.4}, step=1)
    fit_worker.save()
    test_worker.log_metrics({"test/mAP": 0.5}, step=2)
    test_worker.save()
    logger.log_metrics({"baseline/test/mAP": 0.3}, step=0)
    logger.save()
    # A writer created after the file exists (a fresh process) appends instead of deleting it.
    later = ProcessSafeCSVLogger(save_dir=tmp_path, name="csv", version=logger.version)
    later.log_metrics({"test/R@1": 0.2}, step=3)
    later.save()

    with open(tmp_path / "csv" / "version_0" / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    columns = {"step", "train/loss", "val/mAP", "test/mAP", "baseline/test/mAP", "test/R@1"}
    assert set(rows[0]) == columns
    assert [{k: v for k, v in row.items() if v} for row in rows] == [
        {"step": "0", "train/loss": "2.0"},
        {"step": "1", "train/loss": "1.5", "val/mAP": "0.4"},
        {"step": "2", "test/mAP": "0.5"},
        {"step": "0", "baseline/test/mAP": "0.3"},
        {"step": "3", "test/R@1": "0.2"},
    ]
