#!/usr/bin/env bash
# Issue 7 start: VICReg on CIFAR-10 train split, torchvision ResNet-18 (standard 7x7 stem) at 32 px,
# projector 512-2048-2048, batch 256, LARS, warm-up + cosine over 30 epochs, bf16 + channels_last.
R=${RUNS:-/work/e2mc-runs}; DATA=${CIFAR10:-/work/shared/data/cifar10}   # run folder root, CIFAR-10 image folder
mkdir -p "$R" && cd "$R"
RESUME=""; [ -f cifar10_vicreg_r18/checkpoints/last.pt ] && RESUME="--resume"
exec env OMP_NUM_THREADS=2 nice -n 5 e2mc pretrain --recipe cifar10_vicreg_pretrain --out cifar10_vicreg_r18 $RESUME \
  --set data.dataset="$DATA" --set model.cifar_stem=false \
  --set model.head_sizes.projector='[2048, 2048]' --set train.epochs=30 --set optim.warmup_epochs=2 \
  --set train.log_every=20 --set train.probe_size=1024 --set data.num_workers=0 --seed 0
