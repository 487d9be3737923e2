"""The Hub Space of PaCa-ViT: `paca_hf.app` listening on every interface (what a Space needs), port 7860.

Set the Space variable PACAVIT_MODEL to a converted checkpoint (e.g. ivmcl/pacavit-small); without it the app shows a
small model with random weights. Locally: `make app`, or `python spaces/pacavit/app.py --host 127.0.0.1`.
"""

import sys

from paca_hf.app import main


if __name__ == "__main__":
    sys.exit(main(["--host", "0.0.0.0", *sys.argv[1:]]))
