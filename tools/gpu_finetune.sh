#!/usr/bin/env bash
# One timed GPU session (the `device` tool, ~9 minutes a call): fine-tunes the shipped vdsr and
# its 2x-pruned copy side by side with one recipe, evaluates both on Set5, and benches the auto
# backend at 1080p -> 4K. Inputs (git-ignored, carried): data/train/{T91,BSD400},
# data/benchmark/Set5, data/vdsr-start.safetensors (the vdsr to continue from),
# data/vdsr-p2x.safetensors (`upsample prune data/vdsr-start.safetensors --sparsity 0.5 -o ...`).
# Recipe: Adam, cosine to 1e-6 over the steps that fit (a short calibration measures the rate),
# 96-px patches (5.5x the pixels of the paper's 41 px for about the same step time on a GPU that
# the 41-px batches left idle), bf16 autocast, channels_last. Env: BUDGET, TAIL, OUT, RUNS, PY.
set -u
BUDGET=${BUDGET:-540}; PY=${PY:-python3}; OUT=${OUT:-/tmp/gpu-out}; R=${RUNS:-/tmp/gpu-runs}
source "$(dirname "$0")/gpu_env.sh"
export UPSAMPLE_CACHE=/tmp/upsample-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
UP="$PY -m upsample"
TRAIN_END=$((BUDGET - ${TAIL:-150}))
COMMON=(--device cuda --set optim.name='"adam"' --set optim.weight_decay=0.0 --set optim.clip=1.0
        --set optim.clip_adjustable=false --set sched.name='"cosine"' --set sched.eta_min=1e-6
        --set 'train.amp="bf16"' --set train.channels_last=true --set data.patch_size=96
        --set data.workers=7 --set data.batch_size=64)
declare -A LR=([vdsr-ft]=1e-4 [vdsr-p2x]=2e-4)
declare -A INIT=([vdsr-ft]=data/vdsr-start.safetensors [vdsr-p2x]=data/vdsr-p2x.safetensors)
say "calibrating both runs together"
for run in vdsr-ft vdsr-p2x; do
  timeout -s INT ${CAL:-40} $UP train ${CONFIG:-configs/vdsr.toml} --run-dir "$R/cal-$run" --reset --init "${INIT[$run]}" \
    "${COMMON[@]}" --set optim.lr=${LR[$run]} --set train.steps=1000000 --set train.log_every=50 \
    --set val.every=0 > "$R/cal-$run.log" 2>&1 &
done
wait
RATE=$($PY - "$R"/cal-*/metrics.jsonl <<'PY'
import json, statistics, sys
rates = []
for f in sys.argv[1:]:
    rows = [json.loads(l) for l in open(f) if '"loss"' in l]
    pps = [r["patches_per_s"] for r in rows[len(rows) // 2:]] or [0]
    rates.append(statistics.median(pps) / 64)
print(min(rates) or 20)
PY
)
STEPS=$($PY -c "r=${RATE:-20}; t=$TRAIN_END-$(el)-20; print(max(1000, int(r*t*0.9)//1000*1000))")
say "rate ${RATE} steps/s each -> ${STEPS} steps"
for run in vdsr-ft vdsr-p2x; do
  timeout -s INT $((TRAIN_END - $(el))) $UP train ${CONFIG:-configs/vdsr.toml} --run-dir "$R/$run" --reset \
    --init "${INIT[$run]}" "${COMMON[@]}" --set optim.lr=${LR[$run]} --set train.steps=$STEPS \
    --set val.every=$((STEPS / 5)) --set train.ckpt_every=$((STEPS / 5)) --set train.log_every=500 \
    > "$R/$run.log" 2>&1 &
done
wait
say "training done"; tail -n 2 "$R"/vdsr-ft.log "$R"/vdsr-p2x.log
for m in data/vdsr-start.safetensors data/vdsr-p2x.safetensors "$R/vdsr-ft/best.safetensors" "$R/vdsr-p2x/best.safetensors"; do
  [ -f "$m" ] && for s in 2 3 4; do echo "$m x$s: $($UP eval --model "$m" --scale $s --data data/benchmark/Set5 \
    --device cuda --backend torch 2>&1 | tail -n 1)"; done
done
say "bench"
for m in espcn-x2 vapsr-s-x2 vapsr-x2; do
  [ $(el) -lt $((BUDGET - 25)) ] && timeout $((BUDGET - 15 - $(el))) $UP bench --model $m --allow-untrained \
    --size 1920x1080 --device cuda --backend all --half --warmup 3 --runs 10 --json \
    > "$R/bench-$m.json" 2>> "$R/bench.err"
done
for run in vdsr-ft vdsr-p2x; do
  [ -d "$R/$run" ] || continue
  mv "$R/$run/last_state.pt" "$OUT/${run}_last_state.pt" 2>/dev/null
  tar -C "$R" -czf "$OUT/$run.tgz" "$run" "$run.log"
done
tar -C "$R" -czf "$OUT/bench-and-logs.tgz" $(cd "$R" && ls bench-* cal-*.log 2>/dev/null)  # <= 8 files come back
say "done"
