#!/usr/bin/env python
"""Convert one of the authors' PaCa-ViT checkpoints into a transformers folder (safetensors).

    python scripts/convert_official_checkpoint.py --checkpoint IMNET_224_pacavit_small_p2cconv_100_0.pth \
        --config pacavit_small_p2cconv_100_0 --output-dir pacavit-small --task image-classification
"""

import argparse
import sys

from paca_hf.convert import TASKS, ConversionError, convert_checkpoint


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="the authors' .pth file (timm or mmseg format)")
    parser.add_argument("--config", required=True, help="an official model name or a config.json")
    parser.add_argument("--output-dir", required=True, help="folder to write; replaced only by a complete result")
    parser.add_argument("--task", default="image-classification", choices=TASKS)
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="also upload to this Hub repo")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        convert_checkpoint(args.checkpoint, args.config, args.output_dir, task=args.task, push_to_hub=args.push_to_hub)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
