#!/usr/bin/env bash
# The issue's CPU benchmark: ViT-S/16 at 224, batch 32, VPT-deep with 50 prompt tokens (shallow 50, pad 30),
# per-method table in fp32 (step/forward and memory targets are CPU fp32), yardstick with vpt at its fastest
# CPU precision that keeps accuracy (auto: bf16 autocast where the CPU has AVX512-BF16 / AMX) against the
# plain timm VPT-deep in fp32, and an 8-task mixed batch through one PromptBank.
# The data-pipeline row trains VPT-deep fed by vpt's in-memory pipeline against data already in memory.
# On 2 cores this takes ~15-20 minutes on a quiet machine; other processes on the cores slow it a lot.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/results/bench_cpu.json}
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" -m vpt.tools.bench \
  --backbone vit_small_patch16_224 --img-size 224 --batch-size 32 \
  --precision fp32 --yardstick-precision auto --device cpu \
  --methods linear,shallow,deep,pad,full --prompt-length 50 --pad-size 30 --tasks 8 \
  --pipeline-images 256 ${PIPELINE_DATA:+--pipeline-data "$PIPELINE_DATA"} \
  --warmup 2 --steps 5 --out "$OUT" "$@"
# the bench reports figures; the issue's targets are judged here (exit 1 if one fails in its setting)
"$PYTHON" experiments/bench_targets.py "$OUT"
