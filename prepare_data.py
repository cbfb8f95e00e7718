"""Build training data: `python prepare_data.py dataset=nq translate=nllb_600m out_dir=data/prepared` (see docs/data.md).

The same as the `hybatch-prepare-data` console script; the logic is in hybatch.prepare.
"""

from hybatch.prepare.command import main

if __name__ == "__main__":
    main()
