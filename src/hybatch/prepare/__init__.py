"""Build the paper's training data: sources, machine translation, filters, parallel JSONL (`prepare_data.py`)."""
