#!/usr/bin/env bash
# One timed session on a lent GPU machine (the `device` tool gives ~10 minutes a call): trains
# vapsr-x2 and vdsr side by side on the one GPU until a deadline, benches 1080p -> 4K, and leaves
# the run dirs as tarballs in $OUT to bring back (then `python tools/ship.py MODEL RUN_DIR` here).
#
#   data/train/{T91,BSD400,McMaster18} and data/benchmark/Set5 are the carried copies of
#   ../shared/datasets (git-ignored); the configs' ../shared/... paths are linked to them.
#
# vapsr-x2 runs its recipe (lr constant until 70k steps, EMA 0.999), so stopping it at the deadline
# with SIGINT (saved, resumable with --resume) costs nothing. vdsr uses a cosine decay that must
# end on time: a short calibration beside the running vapsr measures its rate, and the step count
# is set from the time left. The steps actually run are in each run's config.toml.
# Env: BUDGET (seconds for everything, default 560), DEV (cuda), PY (python3), OUT, RUNS.
set -u
BUDGET=${BUDGET:-560}; DEV=${DEV:-cuda}; PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu-out}; R=${RUNS:-/tmp/gpu-runs}
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
UP="$PY -m upsample"
TRAIN_END=$((BUDGET - ${TAIL:-70}))   # leaves time for eval, bench and packing

# vapsr-x2 needs many sessions (~10 steps/s here against the recipe's 1M steps): each continues
# the run kept in weights/wip/vapsr-x2 (git-tracked, ~6 MB) and leaves it in $OUT/wip-vapsr-x2;
# copy that back over weights/wip/vapsr-x2 and commit it.
WIP=weights/wip/vapsr-x2 VMODE=--reset
if [ -f "$WIP/last_state.pt" ]; then cp -r "$WIP" "$R/vapsr-x2"; VMODE=--resume; fi
say "vapsr-x2: ${VMODE#--}, stops at ${TRAIN_END}s"
timeout -s INT $((TRAIN_END - $(el))) $UP train configs/vapsr-x2.toml --run-dir "$R/vapsr-x2" $VMODE \
  --device "$DEV" --set data.batch_size=64 --set data.workers=5 --set 'train.amp="bf16"' \
  --set val.every=${VAPSR_VAL:-2000} --set train.ckpt_every=${VAPSR_VAL:-2000} ${VAPSR_SET:-} \
  > "$R/vapsr-x2.log" 2>&1 &
VP=$!

VDSR_SET=(--set optim.name='"adam"' --set optim.lr=2e-4 --set optim.weight_decay=0.0
          --set optim.clip=1.0 --set optim.clip_adjustable=false --set sched.name='"cosine"'
          --set sched.eta_min=1e-6 --set 'train.amp="bf16"' --set train.channels_last=true
          --set data.workers=5)
say "vdsr: calibrating beside vapsr"
timeout -s INT ${CAL:-30} $UP train configs/vdsr.toml --run-dir "$R/cal" --reset --device "$DEV" \
  "${VDSR_SET[@]}" --set train.steps=1000000 --set train.log_every=${CAL_LOG:-50} --set val.every=0 \
  > "$R/cal.log" 2>&1
RATE=$($PY - "$R/cal/metrics.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
pps = [r["patches_per_s"] for r in rows[len(rows) // 2:]] or [0]  # after warm-up
print(statistics.median(pps) / 64 or 50)
PY
)
RATE=${RATE:-50}  # calibration failed: a cautious guess
STEPS=$($PY -c "r=$RATE; t=$TRAIN_END-$(el)-25; print(max(1000, int(r*t*0.9)//1000*1000))")
EVERY=$((STEPS / 10))
say "vdsr: ${RATE} steps/s measured -> ${STEPS} steps"
timeout -s INT $((TRAIN_END - $(el))) $UP train configs/vdsr.toml --run-dir "$R/vdsr" --reset \
  --device "$DEV" "${VDSR_SET[@]}" --set train.steps=$STEPS --set val.every=$EVERY \
  --set train.ckpt_every=$EVERY --set train.log_every=500 > "$R/vdsr.log" 2>&1
say "vdsr: exit $?"
wait $VP; say "vapsr-x2: exit $?"
tail -n 3 "$R/vdsr.log" "$R/vapsr-x2.log"

B=../shared/datasets/benchmark/Set5
for m in vdsr:2 vdsr:3 vdsr:4 vapsr-x2:2; do
  run=${m%:*}; s=${m#*:}
  [ -f "$R/$run/best.safetensors" ] && $UP eval --model "$R/$run/best.safetensors" --scale $s \
    --data $B --device "$DEV" 2>&1 | tail -n 2
done
say "bench"
for m in espcn-x2 vapsr-s-x2 vapsr-x2; do
  [ $(el) -lt $((BUDGET - 20)) ] && timeout $((BUDGET - 15 - $(el))) $UP bench --model $m --allow-untrained \
    --size 1920x1080 --device "$DEV" --backend torch --half --warmup 3 --runs 10 --json \
    >> "$OUT/bench.txt" 2>> "$R/bench.err"
done
tail -n 3 "$R/bench.err"
if [ -f "$R/vapsr-x2/last_state.pt" ]; then
  mkdir -p "$OUT/wip-vapsr-x2"
  cp "$R/vapsr-x2"/{config.toml,last_state.pt,last.safetensors,metrics.jsonl} "$OUT/wip-vapsr-x2/"
  cp "$R/vapsr-x2/best.safetensors" "$OUT/wip-vapsr-x2/" 2>/dev/null
fi
for run in vdsr vapsr-x2; do  # resumable state apart: each file back must stay under 16 MB
  [ -d "$R/$run" ] || continue
  mv "$R/$run/last_state.pt" "$OUT/${run}_last_state.pt" 2>/dev/null
  tar -C "$R" -czf "$OUT/$run.tgz" "$run" "$run.log"
done
cp "$R/cal.log" "$OUT/" 2>/dev/null
say "done"
