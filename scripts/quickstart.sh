#!/usr/bin/env bash
# Set up (scripts/install.sh) and run the quick-start recipe on Fashion-MNIST.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
bash scripts/install.sh
# The recipe pins this project: its pinned commit is built into a cached environment on the
# first run, sharing this checkout's cargo build folder so only the crate itself compiles.
export BT_CARGO_TARGET_DIR=${BT_CARGO_TARGET_DIR:-$PWD/target}
"$PYTHON" recipes/main.py --recipe _2026_12_03_fashion_noise "$@"
