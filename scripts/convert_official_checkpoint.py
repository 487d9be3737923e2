#!/usr/bin/env python
"""Convert one of the authors' PaCa-ViT checkpoints into a complete transformers repo folder:

    python scripts/convert_official_checkpoint.py --checkpoint IMNET_224_pacavit_small_p2cconv_100_0.pth \
        --config pacavit_small_p2cconv_100_0 --output-dir pacavit-small --task image-classification

The command line lives in `paca_hf.hub.convert_cli` (installed as `paca-hf-convert`; `--help` describes every flag).
"""

import sys

from paca_hf.hub.convert_cli import main


if __name__ == "__main__":
    sys.exit(main())
