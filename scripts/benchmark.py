#!/usr/bin/env python
"""Speed and memory of PaCa-ViT against transformers' vision models, measured side by side:

    python scripts/benchmark.py --quick

The method, the flags, the columns and the outputs are described in `paca_hf.benchmarking.cli` (and `--help`); the
outputs go to this checkout's outputs/benchmark unless --output-dir is given.
"""

import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
try:
    import paca_hf  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "src"))

from paca_hf.benchmarking.cli import main  # noqa: E402


if __name__ == "__main__":
    sys.exit(main(default_output_dir=ROOT / "outputs" / "benchmark"))
