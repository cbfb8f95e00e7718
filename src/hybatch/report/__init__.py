"""Results as tables, files and plots: `sweep` (a sweep's runs in the paper's table, the CLI
`python -m hybatch.report <multirun dir>`) and `lareqa` (one run's LAReQA / MIRACL results)."""
