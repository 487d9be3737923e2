#!/usr/bin/env python
"""Box and mask AP (COCO, through pycocotools) of an instance-segmentation model on a COCO-format folder:

    python scripts/evaluate_coco.py --model pacavit-tiny-coco --annotations instances_val2017.json --images val2017 \
        --output results.json

The command line lives in `paca_hf.training.detection.evaluation` (`--help` describes every flag).
"""

import sys

from paca_hf.training.detection.evaluation import main


if __name__ == "__main__":
    sys.exit(main())
