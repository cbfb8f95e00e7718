#!/usr/bin/env bash
# GPU check (docs/performance.md, "GPU check"): hybatch's bf16 training step at batch 128 and, with the
# cached loss, at batch 4096 on an XLM-R-base-shaped model; the same batch-128 run in
# sentence-transformers for the ratio; FAISS-GPU (or torch) search over 1M x 768 vectors.
# Needs torch with CUDA, transformers, sentence-transformers, numpy; nothing from the hub.
#   bash benchmarks/gpu_check.sh [OUT.json] [extra gpu_check.py options]
# Writes OUT.json (default: $OUT/gpu_check.json, else ./gpu_check.json); stops after 470 s.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-.}/gpu_check.json}"
shift || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" timeout 470 python benchmarks/gpu_check.py --out "$out" "$@"
echo "wrote $out"
