#!/usr/bin/env bash
# The main job end to end on bundled, generated sample data (`make demo`).
set -euo pipefail
OUT=${DEMO_OUT:-demo-out}
STORE="$OUT/features.zarr"
rm -rf "$OUT"
mkdir -p "$OUT"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. Synthetic features through the store's writer (stand-in for 'featstore extract')"
python scripts/demo_features.py "$STORE" sample

step "2. featstore store info"
featstore store info "$STORE"

step "3. featstore store ls"
featstore store ls "$STORE" sample
featstore store ls "$STORE" sample synthetic --limit 3

step "4. featstore store verify / compact / gc"
featstore store verify "$STORE"
featstore store compact "$STORE" sample synthetic
featstore store gc "$STORE" --older-than 0
featstore store verify "$STORE"

step "5. Ad-hoc analysis with the Python API (xarray + Dask)"
python scripts/demo_analysis.py "$STORE" sample

step "done: store at $STORE"
