"""The command line of the converter (`scripts/convert_official_checkpoint.py`, `paca-hf-convert`): convert one of
the authors' PaCa-ViT checkpoints into a complete transformers repo folder: safetensors weights, config, image
processor, model card (README.md) and, except for UperNet, the source files for trust_remote_code.

    paca-hf-convert --checkpoint IMNET_224_pacavit_small_p2cconv_100_0.pth \
        --config pacavit_small_p2cconv_100_0 --output-dir pacavit-small --task image-classification
    paca-hf-convert --task semantic-segmentation \
        --checkpoint upernet_pacavit_tiny_p2cconv_100_0_512x512_160k_ade20k.pth \
        --config upernet_pacavit_tiny_p2cconv_100_0_512x512_160k_ade20k --output-dir pacavit-tiny-upernet
    paca-hf-convert --task instance-segmentation \
        --checkpoint mask_rcnn_pacavit_tiny_p2cconv_100_0_mstrain_480_800_1x_coco.pth \
        --config mask_rcnn_pacavit_tiny_p2cconv_100_0_mstrain_480_800_1x_coco --output-dir pacavit-tiny-coco

An UperNet checkpoint is recognised by its keys (mmseg's UPerHead), as is an mmdet Mask R-CNN (neck / RPN / RoI
heads): `--task instance-segmentation` converts it whole, `--task backbone` its backbone alone (the neck and heads
are reported as not converted). Checkpoints are read without running code from them (timm, mmengine / mmseg, Lightning and plain state
dicts).
"""

import argparse
import sys

from transformers.utils import logging

from ..convert import TASKS, ConversionError
from .errors import PublishError
from .repo import convert_checkpoint


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="the authors' .pth file (timm, mmseg or mmdet format)")
    parser.add_argument("--config", required=True, help="an official model name or a config.json")
    parser.add_argument("--output-dir", required=True, help="folder to write; replaced only by a complete result")
    parser.add_argument("--task", default="image-classification", choices=TASKS)
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="also upload to this Hub repo")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.set_verbosity_warning()
    try:
        convert_checkpoint(args.checkpoint, args.config, args.output_dir, task=args.task, push_to_hub=args.push_to_hub)
    except (ConversionError, PublishError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.output_dir}")
    return 0
