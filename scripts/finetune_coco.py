#!/usr/bin/env python
"""Fine-tune the PaCa-ViT Mask R-CNN on COCO-format data (or the built-in instance scenes), with accelerate,
following the authors' 1x recipe (see `paca_hf.training.detection.finetune` for the recipe and the outputs):

    accelerate launch scripts/finetune_coco.py \
        --model_name_or_path pacavit-tiny --output_dir pacavit-tiny-coco \
        --train_annotations coco/annotations/instances_train2017.json --train_images coco/train2017 \
        --validation_annotations coco/annotations/instances_val2017.json --validation_images coco/val2017 \
        --checkpointing_steps epoch --resume_from_checkpoint latest

`--model_name_or_path` is a converted detector or a converted ImageNet classifier (its backbone); `--config_name`
trains from scratch. On fewer than 8 devices the per-device batch stays 2; reach 16 images per step with
`--gradient_accumulation_steps`. `python scripts/finetune_coco.py --help` lists the flags (the ADE20k fine-tune's
names where they mean the same); `paca_hf.training.detection.finetune.main(argv)` runs the same from Python. Bad data
(unknown image or category ids, boxes outside the image, zero-area polygons, missing images) ends with one error
line naming it and exit status 1.
"""

import sys

from paca_hf.training.detection.finetune import cli


if __name__ == "__main__":
    sys.exit(cli())
