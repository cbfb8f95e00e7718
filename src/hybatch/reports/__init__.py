"""Evaluation reports: CSV / PNG files, rich tables, and logging to Lightning loggers."""

from hybatch.reports.lareqa_report import (
    lareqa_table,
    miracl_table,
    pair_matrix,
    plot_pair_matrix,
    plot_per_language,
    report_lareqa,
    write_lareqa_report,
    write_pair_matrix_csv,
)
from hybatch.reports.loggers import finish_loggers, log_results

__all__ = [
    "finish_loggers",
    "lareqa_table",
    "log_results",
    "miracl_table",
    "pair_matrix",
    "plot_pair_matrix",
    "plot_per_language",
    "report_lareqa",
    "write_lareqa_report",
    "write_pair_matrix_csv",
]
