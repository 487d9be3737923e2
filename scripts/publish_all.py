#!/usr/bin/env python
"""Convert every released PaCa-ViT checkpoint into a Hub repo and upload it (see paca_hf.releases.RELEASES).

For each release: take the authors' checkpoint (downloaded from their release URL, or from --checkpoints-dir),
convert it strictly, build the repo (safetensors weights, config with auto_map, image processor, source files for
trust_remote_code, model card), check it (exact file list, bit-exact weights, reload, card metadata, loading as
remote code without paca_hf), and only then create the Hub repo and upload the folder. A release that fails any
step (download, conversion, check or upload) uploads nothing and is reported; the others go on. A summary table
of every release's outcome ends the run, and the exit status is 1 when any failed.

    python scripts/publish_all.py --dry-run     # download, convert and check all; print what would be uploaded
    python scripts/publish_all.py --checkpoints-dir ckpts/ --only pacavit_small_p2cconv_100_0
    python scripts/publish_all.py               # upload everything (token: HF_TOKEN or `hf auth login`)
    python scripts/publish_all.py --list        # the release table (Markdown)
    python scripts/publish_all.py --write-cards model_cards   # every release's card, as uploaded (no checkpoints)
"""

import sys

from paca_hf.hub.publish_cli import main


if __name__ == "__main__":
    sys.exit(main())
