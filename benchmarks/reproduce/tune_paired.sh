#!/bin/bash
# Issue 27's evidence: `e2mc tune` with paired per-image scoring on the committed CIFAR-10 VICReg
# ResNet-18 start, probes as long as the reproduction's arms (2 epochs of the train split minus the
# held-out part), then `--confirm 3` on the test split; and the same search as a domain
# continuation on a second data set (scikit-learn's handwritten digits, upsampled to the start's
# 32 px: at their native size a strided convolution would see 1 x 1 inputs, which e2mc refuses in bf16 on CPU).
# Resumable: rerun the same script after an interruption (finished probes and runs are skipped).
#   benchmarks/reproduce/tune_paired.sh [RUNS]   (RUNS: folder for the tune folders, ~3 GB)
set -euo pipefail
R=$(realpath -m "${1:-/work/e2mc-runs}")
cd "$(dirname "$0")/../.."   # the paths below are the repository's
RES=benchmarks/results/cifar10_vicreg_tune_paired
export OMP_NUM_THREADS=1
TUNE=(nice -n 10 python3 -m e2mc tune benchmarks/starts/cifar10_vicreg_r18/model.safetensors
      --recipe cifar10_vicreg_e2mc --space $RES/space.yaml --select heldout --lidar-images 200
      --workers 1 --threads 1 --confirm 3)
copy() { for ext in json md html; do cp "$1/tune.$ext" "$RES/$2.$ext"; done; cp "$1/confirm/comparison.json" "$RES/$2_confirm_comparison.json"; }
"${TUNE[@]}" --dataset digits --set data.image_size=32 --out "$R/tune27_digits32"
copy "$R/tune27_digits32" digits
"${TUNE[@]}" --dataset /work/shared/data/cifar10 --eval-precision bf16 --out "$R/tune27_cifar"
copy "$R/tune27_cifar" cifar10
