#!/usr/bin/env python
"""Speed and memory of PaCa-ViT against transformers' Swin-T and PVTv2-b1/b2 (ADE20k segmentors: Segformer-B1/B2,
UperNet-Swin-T), on eager PyTorch, torch.compile or ONNX Runtime, measured side by side.

    python scripts/benchmark.py                                   # inference, 224/512/1024, batch 1
    python scripts/benchmark.py --mode both --train-sizes 224 --train-batch-sizes 8
    python scripts/benchmark.py --device cuda --dtype bf16 --sizes 224 --batch-sizes 128 --compile
    python scripts/benchmark.py --quick                           # seconds; what the test runs
    python scripts/benchmark.py --models pacavit-tiny --backend eager,compile,onnxruntime --baseline pacavit-tiny
    python scripts/benchmark.py --task segmentation               # PaCa head vs Segformer-B1/B2, UperNet-Swin-T
    python scripts/benchmark.py --task data --threads 1           # image processor backends, ADE20k augmentation

The method, the columns and the outputs are described in `paca_hf.benchmarking.cli` (and `--help`); the outputs go
to this checkout's outputs/benchmark unless --output-dir is given.
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
