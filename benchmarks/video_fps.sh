#!/usr/bin/env bash
# The speed issue's video check on this machine: a 640x360 H.264 + AAC clip (150 frames, made by
# video_clip.py from `upsample make-clip` of Urban100 img_004) upscaled x3 to 1920x1080 with
# espcn-x3, twice per x264 preset; each run's stderr (fps end to end, ms a frame per stage) and
# the CPU into docs/bench/video-espcn-x3.txt. Pause other work on the machine first.
set -eu
UP=${UP:-.venv/bin/upsample}
PY=${PY:-.venv/bin/python}
IMAGE=${IMAGE:-../shared/datasets/benchmark/Urban100/img_004.webp}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
LOG=docs/bench/video-espcn-x3.txt
$UP make-clip "$IMAGE" -o "$WORK/lossless.mkv" --size 640x360 --seconds 6 --fps 25 --motion panzoom >&2
$PY benchmarks/video_clip.py "$WORK/lossless.mkv" "$WORK/clip360.mp4" >&2
{
  echo "# $(date -u +%F) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores"
  for preset in ultrafast veryfast; do
    for run in 1 2; do
      echo "## upsample video clip360.mp4 -o out.mp4 --model espcn-x3 --preset $preset (run $run)"
      $UP video "$WORK/clip360.mp4" -o "$WORK/out-$preset-$run.mp4" --model espcn-x3 --preset "$preset" 2>&1 \
        | grep -v '^video ' | tr '\r' '\n' | grep -E 'frames/s end to end|^wrote|^auto|^note' || true
    done
  done
} > "$LOG.part"
mv "$LOG.part" "$LOG"
cat "$LOG"
