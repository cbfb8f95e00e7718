"""`python -m hybatch.report <multirun dir>`: the sweep report (see `hybatch.report.sweep`)."""

from hybatch.report.sweep import main

main()
