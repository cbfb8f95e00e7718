"""Mine hard negatives per language: `python mine_negatives.py input=train.jsonl out=mined.jsonl` (see docs/mining.md).

The same as the `hybatch-mine-negatives` console script; the logic is in hybatch.mining.
"""

from hybatch.mining.command import main

if __name__ == "__main__":
    main()
