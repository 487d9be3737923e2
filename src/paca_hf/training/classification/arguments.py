"""Command-line arguments of the ImageNet recipe (scripts/train_imagenet.py, `.train`): those of
transformers' `run_image_classification.py` example, the augmentation's, and `TrainingArguments` with the authors'
recipe as defaults. Importing this module needs no timm."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser, TrainingArguments

from ..distributed import check_fsdp_device, check_launch, distributed_on_cpu


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A PaCa-ViT checkpoint to start from: a folder or a Hub id. Exclusive with --config_name."},
    )
    config_name: str | None = field(
        default=None,
        metadata={
            "help": "Train from scratch with this architecture: an official name (e.g. pacavit_tiny_p2cconv_100_0), "
            "a config.json or a folder holding one."
        },
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Image processor folder / Hub id (default: the model's, else a new one)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Cache folder for Hub downloads and datasets."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the Hub model."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private / gated repos."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise a classifier head whose size differs (new classes)."}
    )
    drop_path_rate: float | None = field(
        default=None, metadata={"help": "Stochastic depth rate (default: the config's; official: 0.1 / 0.1 / 0.5)."}
    )


@dataclass
class DataTrainingArguments:
    dataset_name: str | None = field(
        default="imagenet-1k",
        metadata={"help": "Hub dataset id; ignored when --train_dir / --validation_dir are given."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    train_dir: str | None = field(default=None, metadata={"help": "Training image folder (class sub-folders)."})
    validation_dir: str | None = field(default=None, metadata={"help": "Validation image folder (class sub-folders)."})
    train_val_split: float | None = field(
        default=0.15, metadata={"help": "Fraction of train held out for evaluation when there is no validation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many evaluation images."})
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the class labels."})


@dataclass
class AugmentationArguments:
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Training crop and evaluation crop size (default: the image processor's crop size, 224 for a "
            "new one)."
        },
    )
    crop_pct: float | None = field(
        default=None, metadata={"help": "Evaluation centre-crop ratio (default: the image processor's, 0.9)."}
    )
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0], metadata={"help": "RandomResizedCrop area range."})
    ratio: list[float] = field(
        default_factory=lambda: [3.0 / 4.0, 4.0 / 3.0], metadata={"help": "RandomResizedCrop aspect-ratio range."}
    )
    hflip: float = field(default=0.5, metadata={"help": "Horizontal flip probability."})
    interpolation: str = field(default="bicubic", metadata={"help": "Resampling of the crop and of RandAugment."})
    auto_augment: str | None = field(
        default="rand-m9-mstd0.5-inc1", metadata={"help": "timm RandAugment config string; 'none' switches it off."}
    )
    reprob: float = field(default=0.25, metadata={"help": "Random erasing probability (0 switches it off)."})
    remode: str = field(default="pixel", metadata={"help": "Random erasing fill: pixel, rand or const."})
    recount: int = field(default=1, metadata={"help": "Random erasing: boxes per erased image."})
    mixup: float = field(default=0.8, metadata={"help": "Mixup alpha (0 switches Mixup off)."})
    cutmix: float = field(default=1.0, metadata={"help": "CutMix alpha (0 switches CutMix off)."})
    cutmix_minmax: list[float] | None = field(
        default=None, metadata={"help": "CutMix box side range (min max); overrides the alpha-based box."}
    )
    mixup_prob: float = field(default=1.0, metadata={"help": "Probability of mixing a batch at all."})
    mixup_switch_prob: float = field(default=0.5, metadata={"help": "Probability of CutMix when both are on."})


@dataclass
class PaCaTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the authors' recipe as defaults, plus three recipe settings."""

    learning_rate: float | None = field(
        default=None,
        metadata={"help": "Peak learning rate. Default: --base_learning_rate x global batch / 512."},
    )
    base_learning_rate: float = field(
        default=5e-4, metadata={"help": "Learning rate for a global batch of 512 (scaled linearly)."}
    )
    warmup_epochs: float = field(
        default=5.0, metadata={"help": "Warm-up length in epochs, used when --warmup_steps is 0."}
    )
    amp: str = field(
        default="auto",
        metadata={
            "help": "Mixed precision when neither --bf16 nor --fp16 is given: auto (bf16, else fp16 on GPU; "
            "none on CPU), bf16, fp16 or no."
        },
    )
    num_train_epochs: float = field(default=300.0, metadata={"help": "Total number of training epochs."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on biases and norms)."})
    lr_scheduler_type: str = field(
        default="cosine_warmup_with_min_lr",
        metadata={"help": "Scheduler; the default gets lr_scheduler_kwargs min_lr_rate 0.01, warmup_lr_rate 0.001."},
    )
    label_smoothing_factor: float = field(default=0.1, metadata={"help": "Label smoothing (also inside Mixup)."})
    per_device_train_batch_size: int = field(default=128, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Evaluation batch size per device."})
    do_train: bool = field(default=True, metadata={"help": "Run training."})
    do_eval: bool = field(default=True, metadata={"help": "Evaluate at the end (and per --eval_strategy)."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: no, steps or epoch."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to save checkpoints: no, steps or epoch."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints to keep."})
    logging_steps: float = field(default=50, metadata={"help": "Log every N steps."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the image transforms need the raw columns."}
    )
    dataloader_num_workers: int = field(
        default=min(8, os.cpu_count() or 1), metadata={"help": "Data loading processes (decoding + RandAugment)."}
    )
    log_on_each_node: bool = field(
        default=False,
        metadata={"help": "Log from every machine's first process (default: from the global first process only)."},
    )


def parse_args(argv=None):
    """`(ModelArguments, DataTrainingArguments, AugmentationArguments, PaCaTrainingArguments)` from command-line
    arguments, or from a single `.json` file of them.

    Checks the launch first (`paca_hf.training.distributed.check_launch`: `TrainingError` for an
    `accelerate launch --num_machines N` that started independent processes), and a distributed run on machines
    without GPUs runs on the CPU (gloo), as `--use_cpu` would: `TrainingArguments` sets its device up while being
    parsed, so this goes through accelerate's `ACCELERATE_USE_CPU`."""
    check_launch()
    if distributed_on_cpu():
        check_fsdp_device(cpu=True)
        os.environ["ACCELERATE_USE_CPU"] = "true"
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, AugmentationArguments, PaCaTrainingArguments))
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)
