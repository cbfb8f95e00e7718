"""The Hydra entry point of `prepare_data.py` and the `hybatch-prepare-data` console script.

prepare.yaml sets `hydra.job.name: prepare_data`, so run dirs and logs say so whichever way the
run starts. Heavy imports happen inside the function: `--help` and `--cfg job` answer at once.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Sequence

import hydra
from omegaconf import DictConfig

from hybatch.config import CONFIG_DIR

# The `source=` group was renamed `dataset=` (it named the same thing as training's `data.source`);
# the old spelling works, with a warning, until the next release.
_OLD_GROUP = re.compile(r"^([+~]{0,2})source(?=[.=@]|$)")


def renamed_overrides(args: Sequence[str]) -> list[str]:
    """The command-line overrides with the deprecated `source` group spelled `dataset`."""
    out = []
    for arg in args:
        new = _OLD_GROUP.sub(r"\1dataset", arg)
        if new != arg:
            warnings.warn(f"prepare_data.py: {arg!r} -> {new!r}: the `source` group is now `dataset` "
                          "(the old name goes in the next release)", FutureWarning, stacklevel=2)
        out.append(new)
    return out


@hydra.main(config_path=CONFIG_DIR, config_name="prepare", version_base="1.3")
def _run(cfg: DictConfig) -> None:
    from hybatch.prepare.pipeline import run_prepare

    run_prepare(cfg)


def main() -> None:
    """`prepare_data.py dataset=nq translate=nllb_600m languages=[de,es] out_dir=data/prepared`."""
    sys.argv[1:] = renamed_overrides(sys.argv[1:])
    _run()
