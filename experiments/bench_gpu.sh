#!/usr/bin/env bash
# The issue's GPU benchmark (H100 class): ViT-B/16 at 224, VPT-deep 50 tokens, bf16 autocast, data on the GPU.
# Step/forward (<= 2.3) and memory vs full fine-tuning (<= 0.7, max_memory_allocated) at batch 128;
# throughput (>= 3000 img/s) and MFU from the deep row (pass --peak-tflops for GPUs not in vpt.tools.bench.runtime's table).
# The pipeline row trains VPT-deep fed by vpt's in-memory data pipeline (uint8 cache + crop/flip on the GPU)
# against data already on the GPU (target >= 0.9); PIPELINE_DATA=/path/to/imagefolder uses real images.
# Add --compile to torch.compile the model.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/results/bench_gpu.json}
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" -m vpt.tools.bench \
  --backbone vit_base_patch16_224 --img-size 224 --batch-size 128 \
  --precision bf16 --yardstick-precision bf16 --device cuda \
  --methods linear,shallow,deep,pad,full --prompt-length 50 --pad-size 30 --tasks 8 \
  --pipeline-images 2048 ${PIPELINE_DATA:+--pipeline-data "$PIPELINE_DATA"} \
  --warmup 5 --steps 20 --out "$OUT" "$@"
# the bench reports figures; the issue's targets are judged here (exit 1 if one fails in its setting)
"$PYTHON" experiments/bench_targets.py "$OUT"
