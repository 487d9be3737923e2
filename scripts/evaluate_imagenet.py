#!/usr/bin/env python
"""Top-1 / top-5 accuracy of a PaCa-ViT classifier on a validation image folder:

    python scripts/evaluate_imagenet.py --model pacavit-small --validation_dir imagenet/val --output val.json

The command line lives in `paca_hf.training.classification.evaluation` (`--help` describes every flag and the label
mapping).
"""

import sys

from paca_hf.training.classification.evaluation import main


if __name__ == "__main__":
    sys.exit(main())
