#!/usr/bin/env bash
# `upsample bench --json` of the models the auto-backend issue names, on this machine, into
# docs/bench/cpu-*.json; `python benchmarks/bench_table.py docs/bench/cpu-*.json` prints the
# README table. Ratios are measured within each run (eager fp32 PyTorch is every run's reference).
# RRDBNet x4 uses a 160x90 input (its 640x360 eager frame takes minutes), as the issue's table did.
# IMAGE: a real picture for the max-difference column (default: Urban100 img_004).
set -eu
UP=${UP:-.venv/bin/upsample}
IMAGE=${IMAGE:-../shared/datasets/benchmark/Urban100/img_004.webp}
mkdir -p docs/bench
while read -r model size extra; do
  echo "bench $model $size $extra" >&2
  $UP bench --model "$model" --allow-untrained --size "$size" $extra --backend all --half --warmup 1 --runs ${RUNS:-3} \
    --image "$IMAGE" --json > "docs/bench/cpu-$model.json.part"
  mv "docs/bench/cpu-$model.json.part" "docs/bench/cpu-$model.json"
done <<'LIST'
espcn-x3 640x360
vdsr 640x360 --scale 2
vapsr-x2 640x360
rrdbnet-x4 160x90
LIST
