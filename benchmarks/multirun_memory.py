"""Resident memory of an in-process multirun, job after job: does each run hand its memory back?

    python benchmarks/multirun_memory.py [--jobs 5] [--max-steps 2] [train.py overrides ...]

Runs `train.py -m seed=1,...,N trainer.max_steps=S <overrides>` with the Hydra callback `JobMemory`
(this file), which prints the process's resident set size at the end of every job, after the run has
returned, and its peak so far. Flat end-of-job figures mean nothing accumulates from run to run; the
peak is one run's own (its training steps, see docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from memory import status_mb  # benchmarks/memory.py: this directory is on the path

REPO = Path(__file__).resolve().parents[1]
_LINE = "JOB_MEMORY"


class JobMemory(Callback):
    """Prints `JOB_MEMORY <job> <resident MB> <peak MB>` when a job of the multirun ends."""

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        print(f"{_LINE} {config.hydra.job.num} {status_mb('VmRSS'):.0f} {status_mb('VmHWM'):.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=2)
    args, overrides = parser.parse_known_args()

    with tempfile.TemporaryDirectory() as sweep_dir:
        cmd = [
            sys.executable, "train.py", "-m", f"seed={','.join(str(s) for s in range(1, args.jobs + 1))}",
            f"trainer.max_steps={args.max_steps}", "+hydra.callbacks.job_memory._target_=multirun_memory.JobMemory",
            f"hydra.sweep.dir={sweep_dir}", *overrides,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
        print(" ".join(cmd[1:]), flush=True)
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"train.py failed:\n{proc.stderr[-4000:]}")
    rows = re.findall(rf"^{_LINE} (\d+) (\d+) (\d+)$", proc.stdout, flags=re.MULTILINE)
    print("| job | resident at its end (MB) | peak so far (MB) |\n|---|---|---|")
    for job, resident, peak in rows:
        print(f"| {job} | {int(resident):,} | {int(peak):,} |")


if __name__ == "__main__":
    main()
