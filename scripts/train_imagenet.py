#!/usr/bin/env python
"""Train PaCa-ViT for image classification with transformers' `Trainer` and the authors' ImageNet-1k recipe.

    # the paper's run (8 GPUs x 128 images; the learning rate follows the global batch)
    torchrun --nproc_per_node 8 scripts/train_imagenet.py --config_name pacavit_small_p2cconv_100_0 \
        --dataset_name imagenet-1k --output_dir pacavit-small-in1k

    # an image folder (`datasets`' imagefolder layout: one sub-folder per class, labels = sorted folder names)
    python scripts/train_imagenet.py --config_name pacavit_tiny_p2cconv_100_0 \
        --train_dir data/train --validation_dir data/val --output_dir out

    # fine-tune a converted checkpoint (a folder or a Hub id) on other classes
    python scripts/train_imagenet.py --model_name_or_path pacavit-tiny --ignore_mismatched_sizes \
        --train_dir data/train --validation_dir data/val --num_train_epochs 30 --output_dir out

Arguments follow transformers' `examples/pytorch/image-classification/run_image_classification.py`: model
arguments, data arguments, and every `TrainingArguments` flag; a single `.json` file of them also works. The
defaults are the authors' recipe (timm `train.py`, see `../shared/reference/paper_results.json`):

    optimizer       AdamW (betas 0.9 / 0.999), weight decay 0.05, none on biases and 1-d parameters (norms)
    learning rate   5e-4 x global batch / 512 (`--base_learning_rate`; `--learning_rate` sets it directly)
    schedule        300 epochs, 5 linear warm-up epochs from lr x 1e-3, then cosine to lr x 1e-2 (timm's
                    warmup_lr 5e-7 and min_lr 5e-6 at lr 5e-4): `cosine_warmup_with_min_lr`, per step
    batch           128 per device
    loss            soft-target cross-entropy on Mixup / CutMix targets with label smoothing 0.1
    mixup           Mixup alpha 0.8, CutMix alpha 1.0, prob 1.0, switch prob 0.5 (one draw per batch)
    augmentation    RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3, bicubic), hflip 0.5, RandAugment
                    "rand-m9-mstd0.5-inc1", random erasing 0.25 (per-pixel noise)
    evaluation      the image processor's transform (resize to size / crop_pct 0.9, bicubic, centre crop);
                    top-1 / top-5 through `evaluate` with paca-hf's shipped `accuracy_topk` metric
    precision       `--amp auto`: bf16 on GPUs that support it, else fp16; none on CPU
    drop path       the model config's (official names: tiny / small 0.1, base 0.5); `--drop_path_rate` overrides

The recipe lives in `paca_hf.training.classification.train` (arguments in `classification.arguments`; needs timm:
`pip install -e ".[train]"`): the augmentation is timm's own (`create_transform`, `Mixup`, `SoftTargetCrossEntropy`),
as in the authors' timm `train.py`. Mixup runs inside
`PaCaTrainer.compute_loss` (in training mode only, on the device), so evaluation sees clean batches with integer
labels. `--resume_from_checkpoint` continues exactly: each sample's augmentation is seeded from (seed, epoch, index),
and the Mixup and stochastic-depth generators are saved with every checkpoint; `--resume_from_checkpoint true` takes
the newest checkpoint marked `COMPLETE`, skipping (and naming) any that a killed run left half-written. The final
model (safetensors) and image processor are saved to `--output_dir`, with `train_results.json`, `eval_results.json`
and `all_results.json` (`trainer.save_metrics`).
"""

import sys

from paca_hf.training.classification.arguments import parse_args
from paca_hf.training.classification.train import setup_logging, train_and_evaluate
from paca_hf.training.errors import TrainingError


def main(argv=None):
    model_args, data_args, aug_args, training_args = parse_args(argv)
    setup_logging(training_args)
    return train_and_evaluate(model_args, data_args, aug_args, training_args)


if __name__ == "__main__":
    try:
        main()
    except TrainingError as error:  # a launch or run that cannot go on: one line, exit status 1
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
