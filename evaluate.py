"""Evaluate an encoder: `python evaluate.py benchmark=xquad_r model=me5_small [ckpt_path=...]` (see README.md).

The same as the `hybatch-evaluate` console script; the logic is in hybatch.cli and hybatch.evaluation.
"""

from hybatch.cli import evaluate

if __name__ == "__main__":
    evaluate()
