# Sourced by the tools/gpu_*.sh session scripts: timing helpers and the GPU machine's setup (the
# same on a CPU, for a dry run). The GPU image has torch but not PyAV; training never decodes
# video, so an empty `av` module (only where none imports) lets the CLI, which registers the video
# command, import. ../shared does not travel there: the carried copies under $DATA (default data/)
# stand in for it. Needs OUT, R (the scratch folder for runs, emptied here) and PY set.
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
say() { echo "[$(el)s] $*"; }
die() { echo "[$(el)s] FAILED: $*" >&2; exit 1; }
STUB=$(mktemp -d /tmp/upsample-stub.XXXXXX)
trap 'rm -rf "$STUB"' EXIT
"$PY" -c "import av" 2>/dev/null || : > "$STUB/av.py"
export PYTHONPATH=${SRC:-$PWD/src}:$STUB${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
DATA=${DATA:-data}
if [ ! -e ../shared/datasets/train ] && [ -d "$DATA/train" ]; then
  mkdir -p ../shared/datasets
  ln -sfn "$(cd "$DATA" && pwd)/train" ../shared/datasets/train
  ln -sfn "$(cd "$DATA" && pwd)/benchmark" ../shared/datasets/benchmark
fi
mkdir -p "$R" "$OUT"
rm -rf "${R:?}"/*
