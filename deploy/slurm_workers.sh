#!/usr/bin/env bash
# Start N workers on one recipe as a SLURM job array, one GPU each:
#   sbatch --array=0-7 deploy/slurm_workers.sh --recipe R --experiment E --schema S
# Every argument goes to main.py. Run it from the checkout; the array tasks share the work
# directory (BT_WORK_DIR, default work/ beside the checkout) and the pinning cache.
#SBATCH --job-name=bias-transfer
#SBATCH --array=0-3
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --output=bias-transfer-%A_%a.out

set -euo pipefail
if [ "$#" -eq 0 ]; then
    echo "usage: sbatch --array=0-N deploy/slurm_workers.sh --recipe R [main.py options]" >&2
    exit 2
fi
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PYTHON=${PYTHON:-python3}
echo "worker ${SLURM_ARRAY_TASK_ID:-0} of job ${SLURM_ARRAY_JOB_ID:-local} on $(hostname)"
exec "$PYTHON" recipes/main.py --quiet "$@"
