"""`python -m paca_hf.benchmarking`: the benchmark command line (scripts/benchmark.py)."""

import sys

from paca_hf.benchmarking.cli import main


if __name__ == "__main__":
    sys.exit(main())
