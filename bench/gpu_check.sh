#!/usr/bin/env bash
# Every GPU check and timing in one call, sized for the device machine's budget (one call of at most
# 10 minutes: each stage has its own limit, 580 s in all, so a slow one cannot eat the rest; run it with
# the device tool's timeout_s=600).
#
#   PYTHONPATH=src bash bench/gpu_check.sh                      # on the GPU machine, from the repository root
#   PYTHONPATH=src DEVICE=cpu SMALL=1 bash bench/gpu_check.sh   # a rehearsal of every stage on the CPU
#
# Runs, data and checkpoints go to $WORK. $OUT receives only what the device tool brings back (at most
# 8 files): gpu_check.log (everything printed, with each stage's wall time), seed-results.csv (the seed
# grid's table), recipe-metrics.jsonl, and runs.tar.gz (every run's config.json, metrics.jsonl and
# TensorBoard files, no checkpoints), so the numbers can be copied into BENCHMARKS.md and RESULTS.md
# with their commands.
set -uo pipefail
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-/tmp/gpu-check}
WORK=${WORK:-/tmp/gpu-check-work}
DATA=${DATA:-$WORK/data/tiny-image10}
PY=${PY:-python3}
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

if [ -n "${SMALL:-}" ]; then  # rehearsal: every stage, tiny
    BENCH="--trials 1 --epochs 1 --steps 2 --warmup 1 --eval-images 8 --image-size 64"
    SEED_GRID="--config $WORK/seed-small.toml"
    printf 'preset = "seed"\nlr = [0.005, 0.001]\nmomentum = [0.9]\nepochs = 1\nimage_size = 64\n' > "$WORK/seed-small.toml"
    RECIPE="--epochs 1 --warmup-epochs 0 --image-size 64 --batch-size 32"
    T_GRID=600 T_RECIPE=300 T_CHECK=300 SGD_STEPS=2
else
    BENCH="--trials 2 --epochs 2 --steps 40 --warmup 5 --eval-images 200"
    SEED_GRID="--preset seed"
    RECIPE=""
    T_GRID=${T_GRID:-110} T_RECIPE=${T_RECIPE:-50} T_CHECK=${T_CHECK:-90}
fi

stage() { echo; echo "=== $(date -u +%H:%M:%S) $*"; }
# timed LIMIT CMD...: run CMD under `timeout LIMIT`, then print its wall time and exit status
timed() {
    local limit=$1 start end rc
    shift
    start=$(date +%s.%N)
    timeout "$limit" "$@"
    rc=$?
    end=$(date +%s.%N)
    echo "wall $(echo "$end - $start" | awk '{printf "%.1f", $1 - $3}') s, exit $rc (limit $limit s)"
}

stage "machine"
nvidia-smi -L 2>/dev/null || true
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
$PY -m alexnet_tiny prepare --out "$DATA" -q

stage "0. correctness on the device: dropout masks, SGD step, one epoch stacked vs alone"
timed "$T_CHECK" $PY bench/device_checks.py --device "$DEVICE" --data "$DATA"

stage "1. speed: naive baseline vs the single-trial engine (fp32)"
timed 75 $PY bench/speed.py --device "$DEVICE" --data "$DATA" $BENCH

stage "2. speed: baseline vs 12 stacked trials (fp32)"
timed 75 $PY bench/speed.py --device "$DEVICE" --data "$DATA" $BENCH --stack 12

stage "2b. speed: baseline vs 12 stacked trials, one conv per trial instead of grouped convs (fp32)"
timed 75 $PY bench/speed.py --device "$DEVICE" --data "$DATA" $BENCH --stack 12 --stack-conv split

stage "3. speed: baseline vs 12 stacked trials (bf16 autocast)"
timed 75 $PY bench/speed.py --device "$DEVICE" --data "$DATA" $BENCH --stack 12 --bf16

stage "3b. the stacked SGD step: trials grouped into shared fused calls vs one call per trial and group"
timed 30 $PY bench/sgd_step.py --device "$DEVICE" --steps ${SGD_STEPS:-30}

stage "4. the seed grid (12 trials x 35 epochs, batch 12, 64 px padded to 150, 200 outputs), stacked engine, fp32"
rm -rf "$WORK/seed"
# the time budget ends the grid resumable, with its results, before the stage's limit cuts it
timed "$T_GRID" $PY -m alexnet_tiny grid $SEED_GRID --engine stacked --device "$DEVICE" --data "$DATA" \
    --out "$WORK/seed" --no-report --time-budget "$((T_GRID - 25))" -q
cp "$WORK/seed/results.csv" "$OUT/seed-results.csv" 2>/dev/null || true

stage "5. the recipe, seed 0, bf16"
rm -rf "$WORK/recipe"
timed "$T_RECIPE" $PY -m alexnet_tiny train --preset recipe $RECIPE --precision bf16 --device "$DEVICE" \
    --data "$DATA" --out "$WORK/recipe" -q
cp "$WORK/recipe/metrics.jsonl" "$OUT/recipe-metrics.jsonl" 2>/dev/null || true

stage "bringing back the runs without checkpoints"
(cd "$WORK" && find seed recipe \( -name config.json -o -name metrics.jsonl -o -name 'events.out.tfevents.*' \
    -o -name 'results.*' -o -name grid.json \) -print0 2>/dev/null | tar -czf "$OUT/runs.tar.gz" --null -T -)
ls -la "$OUT"
stage "done"
