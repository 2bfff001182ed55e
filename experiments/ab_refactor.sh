#!/usr/bin/env bash
# A/B of the issue-11 renovation on CPU: the same vpt-bench rows from the code before it (OLD) and from this
# checkout, alternating, so machine noise hits both alike. OLD=/tmp/old bash experiments/ab_refactor.sh
cd "$(dirname "$0")/.."; OLD=${OLD:?set OLD to a checkout of the code before the renovation (git worktree add /tmp/old 21d0ded)}
ARGS="--backbone vit_small_patch16_224 --img-size 224 --batch-size 8 --precision fp32 --device cpu --methods deep,linear --prompt-length 50 --tasks 8 --no-yardstick --warmup 1 --steps 3 --threads 1"
PY=$PWD/.venv/bin/python  # the old code runs from its own folder, so `import vpt` finds it first
OUT_DIR=$(mkdir -p "${OUT_DIR:-/tmp/ab}" && cd "${OUT_DIR:-/tmp/ab}" && pwd)
for round in 1 2; do
  (cd "$OLD" && "$PY" -m vpt.tools.bench $ARGS --out $OUT_DIR/old_$round.json > $OUT_DIR/old_$round.txt 2>&1)
  "$PY" -m vpt.tools.bench $ARGS --out $OUT_DIR/new_$round.json > $OUT_DIR/new_$round.txt 2>&1
done

