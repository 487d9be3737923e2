#!/usr/bin/env python
"""Fine-tune PaCa-ViT with the PaCa segmentation head on ADE20k (or any `image` / `annotation` dataset), with
accelerate, following the authors' recipe (see `paca_hf.training.segmentation.finetune` for the recipe and the
outputs):

    accelerate launch scripts/finetune_ade20k.py \
        --model_name_or_path pacavit-tiny --dataset_name scene_parse_150 --output_dir pacavit-tiny-ade20k \
        --checkpointing_steps 4000 --resume_from_checkpoint latest

On fewer than 8 devices the per-device batch stays 2; reach 16 images per step with
`--gradient_accumulation_steps` (printed as the effective batch). The flag names follow transformers'
`run_semantic_segmentation_no_trainer.py`; `python scripts/finetune_ade20k.py --help` lists them.
`paca_hf.training.segmentation.finetune.main(argv)` runs the same thing from Python (what `make demo` does).
"""

import sys

from paca_hf.training.segmentation.finetune import cli


if __name__ == "__main__":
    sys.exit(cli())
