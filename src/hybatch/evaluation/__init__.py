"""Benchmarks: LAReQA (XQuAD-R, MLQA-R) and MIRACL, and the `evaluate.py` runner."""
