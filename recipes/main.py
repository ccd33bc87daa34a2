"""Run a recipe: `python main.py --recipe R --experiment E --schema S` (see `--help`)."""

import sys
from pathlib import Path

from bias_transfer_rs.cli import main

if __name__ == "__main__":
    sys.exit(main(recipes_dir=Path(__file__).resolve().parent))
