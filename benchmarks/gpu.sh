#!/usr/bin/env bash
# GPU measurements, for when a GPU machine is available (about 3 minutes on one recent GPU):
#   1. evaluation: `rib evaluate`'s code path / forward-only throughput for ViT-B/16 at 224 px in
#      bf16, with the preprocessed cache and without it (JPEGs decoded on the CPU);
#   2. fine-tuning steps per second of ViT-B/16 at 224 px, batch 64, bf16 (the paper's recipe);
#   3. every training method on ViT-B/16 (s per step, eval speed, peak GPU memory), batch 64, bf16,
#      appended to benchmarks/throughputs.yaml for `rib plan` (RECORD=FILE: elsewhere);
#   4. OTDD at paper scale (1000 x 768-d classes against 200 and 1000, 5000 samples), label distances on the GPU.
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
$PY benchmarks/methods_vit_b16.py --device cuda --batch 64 --steps 10 --eval-images 2048 --importance-images 64 \
    --precision bf16 --threads 8 --record "${RECORD:-benchmarks/throughputs.yaml}" | tee "$OUT/methods_vit_b16.txt"
$PY benchmarks/otdd.py --check-classes 10 | tee "$OUT/otdd.txt"
