# Sourced by the tools/gpu_*.sh session scripts: timing helpers and the GPU machine's setup.
# The GPU image has torch but not PyAV; training never decodes video, so an empty module lets
# the CLI (which registers the video command) import. ../shared does not travel there: the
# carried copies under data/ stand in for it. Needs OUT and R (run folder) set.
T0=$(date +%s)
mkdir -p /tmp/upsample-stub && python3 -c "import av" 2>/dev/null || : > /tmp/upsample-stub/av.py
export PYTHONPATH=${SRC:-$PWD/src}:/tmp/upsample-stub PYTHONUNBUFFERED=1
el() { echo $(( $(date +%s) - T0 )); }
say() { echo "[$(el)s] $*"; }
if [ ! -e ../shared/datasets/train ]; then
  mkdir -p ../shared/datasets
  ln -sfn "$PWD/data/train" ../shared/datasets/train
  ln -sfn "$PWD/data/benchmark" ../shared/datasets/benchmark
fi
mkdir -p "$R" "$OUT"
rm -rf "${R:?}"/*
