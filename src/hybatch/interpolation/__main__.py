"""`python -m hybatch.interpolation <start> <fine-tuned> --lambda 0.5 <out>`: WiSE-FT on two exported models.

Both folders are loaded with the encoder class (folders written by `DualEncoder.save_pretrained`,
sentence-transformers folders, Hugging Face folders); θ(λ) = (1-λ)·start + λ·fine-tuned is written
as an exported folder with the fine-tuned model's settings (pooling, prompts, max lengths). With
several `--lambda`, each goes to `<out>/lambda_<λ>/`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from hybatch.encoder import DualEncoder
from hybatch.interpolation import InterpolationError, cpu_state, lambda_label, load_interpolated, merge_lora

log = logging.getLogger(__name__)


def load_encoder(path: str) -> DualEncoder:
    """An exported folder as a plain (LoRA-merged) encoder."""
    return merge_lora(DualEncoder.from_pretrained(path))


def interpolate_folders(start: str, fine_tuned: str, lambdas: Sequence[float], out: str | Path) -> list[Path]:
    """Write θ(λ) for each λ; returns the folders written."""
    if not lambdas:
        raise InterpolationError("give at least one --lambda")
    bad = [lam for lam in lambdas if not 0.0 <= lam <= 1.0]
    if bad:
        raise InterpolationError(f"--lambda {bad}: expected values in [0, 1]")
    start_encoder = load_encoder(start)
    start_state = cpu_state(start_encoder)
    encoder = load_encoder(fine_tuned)
    differing = {k: (v, encoder.settings()[k]) for k, v in start_encoder.settings().items() if encoder.settings()[k] != v}
    if differing:
        log.warning("the two models' settings differ (start, fine-tuned): %s; the output keeps the fine-tuned ones", differing)
    del start_encoder
    fine_state = cpu_state(encoder)
    out = Path(out)
    written = []
    for lam in lambdas:
        load_interpolated(encoder, start_state, fine_state, lam)
        folder = out if len(lambdas) == 1 else out / f"lambda_{lambda_label(lam)}"  # no "=": the path must work as a Hydra override value
        encoder.save_pretrained(folder)
        log.info("λ=%g: wrote %s", lam, folder)
        written.append(folder)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hybatch.interpolation", description=__doc__.splitlines()[0])
    parser.add_argument("start", help="the starting model (e.g. the backbone): an exported / sentence-transformers / HF folder")
    parser.add_argument("fine_tuned", help="the fine-tuned model, same architecture (e.g. <run dir>/model)")
    parser.add_argument("out", type=Path, help="output folder (with several --lambda: one <out>/lambda_<λ>/ each)")
    parser.add_argument("--lambda", dest="lambdas", type=float, action="append", required=True, help="weight of the fine-tuned model in [0, 1]; repeatable")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for folder in interpolate_folders(args.start, args.fine_tuned, args.lambdas, args.out):
        print(folder)


if __name__ == "__main__":
    main()
