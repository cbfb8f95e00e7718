"""Train a multilingual dual encoder: `python train.py sampler=hybrid model=labse` (see README.md).

The same as the `hybatch-train` console script; the logic is in hybatch.cli and hybatch.training.
"""

from hybatch.cli import train

if __name__ == "__main__":
    train()
