"""Benchmarks: LAReQA (XQuAD-R, MLQA-R), MIRACL and BEIR-layout folders, and the `evaluate.py` runner."""
