#!/usr/bin/env bash
# One GPU session (the `device` tool runs one command of at most 10 minutes): continues the run
# kept in the repo (weights/wip/$RUN), trains to a deadline the trainer keeps (`upsample train
# --resume --max-minutes N` saves before it), evaluates the weights on Set5 and Set14
# (`upsample eval --json`) and leaves under $OUT what to bring back:
#   $OUT/$RUN/               the run dir's files: copy them over weights/wip/$RUN and commit
#   $OUT/eval-$RUN.json      Set5/Set14 PSNR/SSIM of $OUT/$RUN/last.safetensors
#   $OUT/session-$RUN.log    what the trainer and the evaluator printed
# At most 8 files, each under 16 MiB (the device's limits): checked before training (a resumed
# run's files) and before anything is copied; the script fails, naming the file, when one is over.
#
# Here, before the call:  RUN=vapsr-x2 tools/gpu_session.sh --prepare
#   copies the run's training folders and the eval sets from ../shared/datasets into data/
#   (git-ignored) and fails if the tree that travels would pass the device's 64 MiB.
# The call:  run(command="bash tools/gpu_session.sh", carry=["data"], timeout_s=600)
# A WIP folder without last_state.pt (or none) starts the run from $CONFIG. The CPU dry run in
# the suite (tests/test_gpu_session.py) runs this script with DEV=cpu, a tiny recipe and copies.
#
# Env: RUN (vapsr-x2), WIP (weights/wip/$RUN), CONFIG (configs/$RUN.toml: a new run's recipe),
#   TRAIN_DIRS (a new run only: training folders in place of the recipe's data.train, recorded in
#   its config.toml), BUDGET (seconds for everything, 540), TAIL (seconds kept after training for
#   eval and packing, 90), STARTUP (seconds of the trainer's start and exit, outside its own
#   deadline, 15), DEV (cuda), PY (python3), SETS (more `upsample train` arguments, no
#   spaces inside one; default on cuda: bf16 autocast, 8 loader workers), EVAL_SETS ("Set5
#   Set14"), EVAL_ARGS (e.g. "--scale 2"), OUT, RUNS (scratch, emptied), DATA (data), SHARED
#   (../shared/datasets: where --prepare copies from), FILE_LIMIT (bytes, 16 MiB), FILE_COUNT (8).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-vapsr-x2}; WIP=${WIP:-weights/wip/$RUN}; CONFIG=${CONFIG:-configs/$RUN.toml}
BUDGET=${BUDGET:-540}; TAIL=${TAIL:-90}; STARTUP=${STARTUP:-15}; DEV=${DEV:-cuda}; PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu-out}; R=${RUNS:-/tmp/gpu-runs}; DATA=${DATA:-data}
SHARED=${SHARED:-../shared/datasets}; EVAL_ROOT=../shared/datasets/benchmark
FILE_LIMIT=${FILE_LIMIT:-$((16 * 1024 * 1024))}; FILE_COUNT=${FILE_COUNT:-8}
TRAVEL_LIMIT=${TRAVEL_LIMIT:-$((64 * 1024 * 1024))}
EVAL_SETS=${EVAL_SETS:-Set5 Set14}; TRAIN_DIRS=${TRAIN_DIRS:-}
GPU_SETS='--set train.amp="bf16" --set data.workers=8'
[ "$DEV" = cuda ] || GPU_SETS=
read -ra SET_ARGS <<< "${SETS-$GPU_SETS}"
read -ra EVAL_EXTRA <<< "${EVAL_ARGS:-}"
RESUME=0; [ -f "$WIP/last_state.pt" ] && RESUME=1
CFG_FILE=$CONFIG; [ $RESUME = 1 ] && CFG_FILE=$WIP/config.toml

train_dirs() {  # what the run trains on: TRAIN_DIRS (a new run) or its config's data.train
  if [ -n "$TRAIN_DIRS" ]; then printf '%s\n' $TRAIN_DIRS; return; fi
  "$PY" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["data"]["train"]))' "$CFG_FILE"
}

step_of() {  # the step a checkpoint was saved at (its safetensors metadata; 0 when none)
  [ -f "$1" ] || { echo 0; return; }
  "$PY" - "$1" <<'PY'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
print(json.loads(header["__metadata__"].get("extra", "{}")).get("step", 0))
PY
}

check_limits() {  # the device returns at most FILE_COUNT files (with $OUT's), each under FILE_LIMIT bytes
  local f size n=$(( $# + $(find "$OUT" -type f | wc -l) ))
  [ "$n" -le "$FILE_COUNT" ] || die "$n files to return ($OUT holds $(( n - $# ))), the device \
returns at most $FILE_COUNT"
  check_sizes "$@"
}

check_sizes() {
  local f size
  for f in "$@"; do
    size=$(stat -c %s "$f")
    [ "$size" -lt "$FILE_LIMIT" ] || die "$f is $size bytes, not under the $FILE_LIMIT bytes the \
device returns; nothing copied (a smaller model or batch state, or split the file)"
  done
}

tree_bytes() {  # what travels to the device machine: tracked and unignored files, and $DATA
  { if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
      git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null || true
    else find . -path "./$DATA" -prune -o -type f -printf '%s\n'; fi
    du -sb "$DATA" | cut -f1; } | awk '{s += $1} END {print s + 0}'
}

prepare() {  # here, before the call: copies of the run's data under $DATA, and the travel size
  local dirs p dst total
  dirs=$(train_dirs) || die "cannot read data.train from $CFG_FILE"
  for p in $dirs $(printf "$EVAL_ROOT/%s\n" $EVAL_SETS); do
    case $p in ../shared/datasets/*) ;; *) die "$p is not under ../shared/datasets: only those \
travel (as copies under $DATA)" ;; esac
    dst=$DATA/${p#../shared/datasets/}
    [ -e "$SHARED/${p#../shared/datasets/}" ] || die "$SHARED/${p#../shared/datasets/} not found"
    [ -e "$dst" ] || { mkdir -p "$(dirname "$dst")"; cp -r "$SHARED/${p#../shared/datasets/}" "$dst"; }
  done
  total=$(tree_bytes)
  say "the tree that travels: $((total / 1048576)) MiB of the device's 64 MiB ($DATA carried)"
  [ "$total" -lt "$TRAVEL_LIMIT" ] || die "over the 64 MiB the device takes: carry fewer training \
folders (a new run: TRAIN_DIRS=...) or remove what is not needed from $DATA"
}

preflight() {  # everything a session needs, before the GPU minutes start to count
  local dirs d s
  if [ $RESUME = 1 ] && [ -n "$TRAIN_DIRS" ]; then
    die "TRAIN_DIRS is for a new run; $WIP trains on what its config.toml names"
  fi
  [ -f "$CFG_FILE" ] || die "$CFG_FILE not found (RUN=$RUN: set CONFIG, or WIP to a run dir)"
  dirs=$(train_dirs) || die "cannot read data.train from $CFG_FILE"
  for d in $dirs; do [ -e "$d" ] || die "training data $d is missing: carry it (run \
'tools/gpu_session.sh --prepare' here first, then carry [\"$DATA\"])"; done
  for s in $EVAL_SETS; do [ -d "$EVAL_ROOT/$s" ] || die "eval set $EVAL_ROOT/$s is missing"; done
  if [ $RESUME = 1 ]; then  # a state file too large to return would be trained in vain
    check_sizes "$WIP"/last_state.pt $(find "$WIP" -maxdepth 1 -name '*.safetensors')
  fi
}

if [ "${1:-}" = --prepare ]; then R=$(mktemp -d); OUT=$R/out; fi  # leaves the scratch folders be
source tools/gpu_env.sh
if [ "${1:-}" = --prepare ]; then prepare; exit 0; fi
preflight
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
RD=$R/$RUN; LOG=$R/session-$RUN.log; FAIL=
if [ $RESUME = 1 ]; then
  cp -r "$WIP" "$RD"; MODE=(--resume)
else
  MODE=(--reset)
  if [ -n "$TRAIN_DIRS" ]; then
    MODE+=(--set "data.train=$("$PY" -c 'import json, sys; print(json.dumps(sys.argv[1:]))' $TRAIN_DIRS)")
  fi
fi
START=$(step_of "$RD/last.safetensors")
TRAIN_S=$((BUDGET - TAIL - $(el)))  # the trainer's share; its deadline leaves out STARTUP
MINUTES=$("$PY" -c "print(round(($TRAIN_S - $STARTUP) / 60, 3))")
[ "$TRAIN_S" -gt "$STARTUP" ] || die "BUDGET=$BUDGET leaves ${TRAIN_S}s after TAIL=$TAIL, \
not more than STARTUP=$STARTUP"
say "$RUN: ${MODE[0]#--} at step $START on $DEV, --max-minutes $MINUTES"
# The trainer saves and stops before its deadline; the timeout only backs it up (its SIGINT is
# saved too: exit 124), and a trainer that ignores that is killed (137) with its last checkpoint.
rc=0
timeout -k 20 -s INT $((TRAIN_S + TAIL / 3)) "$PY" -m upsample train "$CFG_FILE" --run-dir "$RD" \
  "${MODE[@]}" --device "$DEV" --max-minutes "$MINUTES" "${SET_ARGS[@]}" > "$LOG" 2>&1 || rc=$?
tail -n 3 "$LOG"
END=$(step_of "$RD/last.safetensors")
say "$RUN: trainer exit $rc, step $START -> $END"
case $rc in 0|124) ;; *) FAIL="training exited $rc (see $LOG)" ;; esac
[ "$END" -gt "$START" ] || FAIL="${FAIL:-no step was saved} (step $START -> $END)"

EVAL_DIRS=(); for s in $EVAL_SETS; do EVAL_DIRS+=("$EVAL_ROOT/$s"); done
EVAL_JSON=$R/eval-$RUN.json
if [ -f "$RD/last.safetensors" ]; then
  rc=0
  timeout $((BUDGET - 5 - $(el) > 20 ? BUDGET - 5 - $(el) : 20)) "$PY" -m upsample eval \
    --model "$RD/last.safetensors" --data "${EVAL_DIRS[@]}" --device "$DEV" --backend torch \
    "${EVAL_EXTRA[@]}" --json "$EVAL_JSON.tmp" >> "$LOG" 2>&1 || rc=$?
  if [ $rc = 0 ]; then mv "$EVAL_JSON.tmp" "$EVAL_JSON"
  else FAIL="${FAIL:+$FAIL; }eval exited $rc$([ $rc = 124 ] && echo ' (out of time)') (see $LOG)"; fi
  tail -n $(( $(wc -w <<< "$EVAL_SETS") + 2 )) "$LOG"
fi

BACK=()  # the run dir's files when the run advanced, the eval JSON, the log
if [ "$END" -gt "$START" ]; then
  for f in config.toml last_state.pt last.safetensors best.safetensors metrics.jsonl; do
    [ -f "$RD/$f" ] && BACK+=("$RD/$f")
  done
fi
[ -f "$EVAL_JSON" ] && BACK+=("$EVAL_JSON")
BACK+=("$LOG")
check_limits "${BACK[@]}"
mkdir -p "$OUT/$RUN"
for f in "${BACK[@]}"; do
  case $f in "$RD"/*) cp "$f" "$OUT/$RUN/" ;; *) cp "$f" "$OUT/" ;; esac
done
say "returned $(find "$OUT" -type f | wc -l) files: $(cd "$OUT" && find . -type f | sort | tr '\n' ' ')"
[ -z "$FAIL" ] || die "$FAIL"
say "done: copy $OUT/$RUN/* over $WIP/ and commit"
