#!/bin/bash
# Issue 14's evidence: `e2mc tune` on the committed CIFAR-10 VICReg ResNet-18 start.
# Resumable: rerun the same script after an interruption (finished probes / runs are skipped).
#   1. successive halving (the default, cheapest schedule), held-out selection -> tune_sh.*
#   2. the full grid in the same folder (it resumes the halving's probes) -> tune_full.*, summary.md
#   3. --confirm 3: the halving's choice vs base-only, 3 seeds, full train split for the probes' 39 steps
#      (--confirm-epochs 0.2), test split once -> tune_confirm.*
# Usage: benchmarks/reproduce/tune_cifar.sh [OUT]   (OUT: the tune folder, ~2 GB of probe checkpoints)
set -euo pipefail
OUT=${1:-/work/h14-runs/tune_cifar}
RES=benchmarks/results/cifar10_vicreg_tune
export OMP_NUM_THREADS=1
TUNE=(nice -n 10 python3 -m e2mc tune benchmarks/starts/cifar10_vicreg_r18/model.safetensors
      --dataset /work/shared/data/cifar10 --recipe cifar10_vicreg_e2mc --space $RES/space.yaml
      --holdout 2500 --train-images 5000 --select heldout --eval-precision bf16 --lidar-images 200
      --workers 2 --threads 1 --out "$OUT")
copy() { for ext in json md html; do cp "$OUT/tune.$ext" "$RES/tune_$1.$ext"; done; }
"${TUNE[@]}" && copy sh
"${TUNE[@]}" --budget full && copy full
python3 -m benchmarks.reproduce.tune_evidence $RES
OMP_NUM_THREADS=2 "${TUNE[@]}" --confirm 3 --confirm-epochs 0.2 && copy confirm && cp "$OUT/confirm/comparison.json" $RES/confirm_comparison.json
