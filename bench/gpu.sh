#!/usr/bin/env bash
# GPU rows of the benchmarks (issue 14): run on a CUDA machine from the repository root,
#   bash bench/gpu.sh [OUT_DIR]
# 1. training step (ResNetSE34L TAP/CAP, 200 x 3 crops, fp32 and --mixedprec), extraction
#    files/s and CAP scoring pairs/s on the GPU (bench/bench_gpu.py);
# 2. the loader that feeds it: 2 s crops/s per worker at the full VoxCeleb2 list size, with
#    as many workers as the machine has cores (bench/scale/run.py --only crops).
# Needs a CUDA build of torch and capsv installed (make install TORCH=...), about 3 GB of
# disk for the layout and ~10 minutes. Paste the printed rows into bench/RESULTS.md with the
# GPU's name. Tests never need a GPU.
set -euo pipefail
out=${1:-gpu-results}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONPATH=${PYTHONPATH:-$PWD/src}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$python" bench/bench_gpu.py --out "$out/gpu_rows.jsonl"
workers=$(nproc)
"$python" bench/scale/run.py --root "${SCALE_ROOT:-/tmp/capsv-scale}" --only crops \
    --workers "$workers" --seconds 20 | tee "$out/loader.txt"
