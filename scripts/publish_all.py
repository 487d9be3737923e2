#!/usr/bin/env python
"""Convert every released PaCa-ViT checkpoint into a Hub repo, check it and upload it:

    python scripts/publish_all.py --dry-run

The command line lives in `paca_hf.hub.publish_cli` (`--help` describes every flag).
"""

import sys

from paca_hf.hub.publish_cli import main


if __name__ == "__main__":
    sys.exit(main())
