#!/usr/bin/env bash
# Set up (scripts/install.sh) and run the quick-start recipe on Fashion-MNIST.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
bash scripts/install.sh
"$PYTHON" recipes/main.py --recipe _2026_12_03_fashion_noise "$@"
