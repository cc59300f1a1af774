#!/usr/bin/env bash
# The exact pipeline this session ran after pre-training (results copied from /work/e2mc-runs/{select,arms}
# into benchmarks/results/cifar10_vicreg{_select,}/).
# Issue 7 pipeline after pre-training: export start -> held-out selection -> test arms (3 seeds)
# -> curve -> ablation arms. Each step is resumable; rerun the script after an interruption.
set -euo pipefail
cd "$(dirname "$0")/../.."   # the repository root
export OMP_NUM_THREADS=2
R=${RUNS:-/work/e2mc-runs}   # run folders (large; not in git)
START=benchmarks/starts/cifar10_vicreg_r18
LR=0.03
log() { echo "[$(date +%H:%M:%S)] $*"; }
# 1. export the last epoch as the committed start
if [ ! -f $START/model.safetensors ]; then
  log export
  python -m benchmarks.reproduce.export_start $R/cifar10_vicreg_r18/checkpoints/epoch_0030.pt \
      --name cifar10_vicreg_r18
fi
# 2. choose E2MC's entropy weight and the epoch count on 5,000 held-out TRAIN images (LR fixed a priori)
log select
python -m benchmarks.reproduce.arms --select --holdout 5000 --start $START --arms base,e2mc --seeds 0 \
    --epochs 2 --lr $LR --entropy-weight 5,10,20 --cov-weight 1 --protocols knn,rankme --threads 2 \
    --out $R/select --title "Selection on 5,000 held-out training images"
read EW EP < <(R=$R python - <<'PY'
import json, os, re
sel = json.load(open(os.path.join(os.environ["R"], "select", "results.json")))["selection"]
lab = sel["label"]
ew = re.search(r"-ew([0-9.e+-]+)-cw", lab).group(1)
ep = re.search(r"@ep(\d+)", lab).group(1)
print(ew, ep)
PY
)
log "selected entropy weight $EW, epochs $EP"
# 3. the test-split comparison: start, base-only, E2MC; 3 seeds
log arms
python -m benchmarks.reproduce.arms --start $START --arms base,e2mc --seeds 0,1,2 --epochs $EP --lr $LR \
    --entropy-weight $EW --cov-weight 1 --threads 2 --out $R/arms \
    --title "CIFAR-10, VICReg ResNet-18 start, $EP continued epochs"
# 4. the pre-training curve (every 5 epochs)
log curve
python -m benchmarks.reproduce.curve --run $R/cifar10_vicreg_r18 --out benchmarks/results/cifar10_vicreg_curve \
    --every 5 --threads 2
# 5. ablations and alternatives, seed 0 first, then seeds 1 and 2
for seeds in 0 1 2; do
  for arm in e2mc_entropy e2mc_cov vc uniformity mmcr; do
    log "ablation $arm seed $seeds"
    python -m benchmarks.reproduce.arms --start $START --arms $arm --seeds $seeds --epochs $EP --lr $LR \
        --entropy-weight $EW --cov-weight 1 --threads 2 --out $R/arms \
        --title "CIFAR-10, VICReg ResNet-18 start, $EP continued epochs"
  done
done
log done
