#!/usr/bin/env bash
# Issue 24 start: DINO on the CIFAR-10 train split, a small timm ViT at 32 px (recipe
# cifar10_dino_pretrain: patch 4, 3 blocks, width 64; 2 global + 4 local crops; head 512/128/4096),
# batch 128, AdamW, warm-up + cosine over 30 epochs, one checkpoint per epoch kept (curve.py reads
# them). Runs in the background with 1 thread at nice 10; rerun it to resume after a stop.
#   RUNS=/work/e2mc-runs CIFAR10=/work/shared/data/cifar10 benchmarks/reproduce/pretrain_dino.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
R=${RUNS:-/work/e2mc-runs}; DATA=${CIFAR10:-/work/shared/data/cifar10}   # run folder root, CIFAR-10 image folder
OUT="$R/cifar10_dino_vit"
mkdir -p "$OUT"
cd "$R"
PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1 nohup nice -n 10 \
  python -m e2mc pretrain --recipe cifar10_dino_pretrain --out "$OUT" --auto-resume \
  --set data.dataset="$DATA" --set train.log_every=20 --seed 0 >>"$OUT.log" 2>&1 &
echo "started PID $! -> $OUT (log $OUT.log)"
