#!/usr/bin/env bash
# The main job end to end on generated sample data (`make demo`). Everything runs on
# the CPU with no download; encoders and trainers will join as they land.
set -euo pipefail
OUT=${DEMO_OUT:-demo-out}
STORE="$OUT/features.zarr"
rm -rf "$OUT"
mkdir -p "$OUT"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. Generate the sample dataset (synthetic talking faces, AV-Deepfake1M format)"
featstore sample make "$OUT/sample"

step "2. Probe one clip"
featstore media probe "$(find "$OUT/sample" -name real.mp4 | sort | head -1)"

step "3. Import its manifest into the store"
featstore datasets import av1m "$OUT/sample" --name sample --store "$STORE" --strict
featstore datasets show sample --store "$STORE" --limit 5

step "4. Track faces and cache the landmarks in the store (reused by mouth/face crops)"
python scripts/demo_tracks.py "$STORE" sample --limit 20   # as if interrupted half way
python scripts/demo_tracks.py "$STORE" sample              # resume: only the other 20 run
python scripts/demo_tracks.py "$STORE" sample              # nothing left to do

step "5. Inspect and maintain the store"
featstore store info "$STORE"
featstore store ls "$STORE" sample tracks-dlib68 --limit 3
featstore store verify "$STORE"
featstore store compact "$STORE" sample tracks-dlib68
featstore store gc "$STORE" --older-than 0
featstore store verify "$STORE"

step "6. Ad-hoc analysis with the Python API (xarray + Dask)"
python scripts/demo_analysis.py "$STORE" sample

step "done: sample data in $OUT/sample, store at $STORE"
