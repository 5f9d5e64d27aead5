#!/usr/bin/env bash
# GPU measurements, for when a GPU machine is available (about 3 minutes on one recent GPU):
#   1. evaluation: `rib evaluate`'s code path / forward-only throughput for ViT-B/16 at 224 px in
#      bf16, with the preprocessed cache and without it (JPEGs decoded on the CPU);
#   2. fine-tuning steps per second of ViT-B/16 at 224 px, batch 64, bf16 (the paper's recipe).
# Random weights (no download); run from the project folder with the project installed:
#   bash benchmarks/gpu.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/out/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python}
$PY -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("GPU:", torch.cuda.get_device_name(0))'
$PY benchmarks/eval_throughput.py --arch vit_base_patch16_224 --input-size 224 --source-size 256 \
    --images 3000 --batch 256 --device cuda --precision bf16 --threads 8 --workers 8 --repeats 2 \
    | tee "$OUT/eval_throughput.txt"
$PY benchmarks/finetune_speed.py --arch vit_base_patch16_224 --size 224 --batch 64 --steps 40 \
    --device cuda --precision bf16 | tee "$OUT/finetune_speed.txt"
