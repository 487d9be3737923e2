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

Mixup runs inside `PaCaTrainer.compute_loss` (in training mode only, on the device), so evaluation sees clean
batches with integer labels. The final model (safetensors) and image processor are saved to `--output_dir`, with
`train_results.json`, `eval_results.json` and `all_results.json` (`trainer.save_metrics`).
"""

import logging
import math
import os
import random
import sys
from dataclasses import dataclass, field

import datasets
import torch
import torch.nn.functional as F
import transformers
from datasets import ClassLabel, load_dataset
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import IntervalStrategy

from paca_hf import PaCaViTConfig, PaCaViTForImageClassification, PaCaViTImageProcessor
from paca_hf.configuration_pacavit import OFFICIAL_NAMES
from paca_hf.imagenet_augment import ImageNetTrainTransform, Mixup, soft_target_cross_entropy
from paca_hf.metrics import load_metric


logger = logging.getLogger(__name__)

# timm's warmup_lr (5e-7) and min_lr (5e-6) as fractions of the recipe's base learning rate (5e-4).
RECIPE_SCHEDULER_KWARGS = {"min_lr_rate": 0.01, "warmup_lr_rate": 0.001}


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
    scale: list[float] = field(
        default_factory=lambda: [0.08, 1.0], metadata={"help": "RandomResizedCrop area range."}
    )
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
        metadata={"help": "Mixed precision when neither --bf16 nor --fp16 is given: auto (bf16, else fp16 on GPU; "
                  "none on CPU), bf16, fp16 or no."},
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


class PaCaTrainer(Trainer):
    """`Trainer` with the recipe's loss: Mixup / CutMix on the batch and soft-target cross-entropy in training,
    plain cross-entropy in evaluation, and timm's weight-decay groups (no decay on biases and 1-d parameters)."""

    # compute_loss returns a per-batch mean; Trainer divides it by the gradient accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, mixup: Mixup | None = None, label_smoothing: float = 0.0, mixup_seed=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.mixup = mixup
        self.label_smoothing = float(label_smoothing)
        self.mixup_rng = random.Random(mixup_seed) if mixup_seed is not None else None

    def get_decay_parameter_names(self, model) -> list[str]:
        return [name for name, param in model.named_parameters() if param.ndim > 1 and not name.endswith(".bias")]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        if labels is None:
            raise ValueError("PaCaTrainer needs `labels` in every batch")
        pixel_values = inputs.pop("pixel_values")
        if model.training and self.mixup is not None and self.mixup.enabled:
            pixel_values, targets = self.mixup(pixel_values, labels, rng=self.mixup_rng)
        else:
            targets = labels
        outputs = model(pixel_values=pixel_values, **inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        if targets.is_floating_point():
            loss = soft_target_cross_entropy(logits, targets.to(logits.device))
        else:
            smoothing = self.label_smoothing if model.training else 0.0
            loss = F.cross_entropy(logits.float(), targets.to(logits.device).long(), label_smoothing=smoothing)
        return (loss, outputs) if return_outputs else loss


class BatchTransform:
    """`datasets` transform: `{image, label}` columns -> `{pixel_values, labels}` (a class, so that DataLoader workers
    can pickle it under any start method)."""

    def __init__(self, image_transform, image_column: str = "image", label_column: str = "label"):
        self.image_transform = image_transform
        self.image_column = image_column
        self.label_column = label_column

    def __call__(self, batch):
        return {
            "pixel_values": [self.image_transform(image) for image in batch[self.image_column]],
            "labels": batch[self.label_column],
        }


class EvalImageTransform:
    """The image processor (the authors' evaluation transform) on one image."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, image):
        return self.image_processor(image.convert("RGB"), return_tensors="pt")["pixel_values"][0]


def collate_fn(examples):
    return {
        "pixel_values": torch.stack([torch.as_tensor(example["pixel_values"]) for example in examples]),
        "labels": torch.tensor([int(example["labels"]) for example in examples], dtype=torch.long),
    }


def parse_args(argv=None):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, AugmentationArguments, PaCaTrainingArguments))
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def load_data(data_args: DataTrainingArguments, model_args: ModelArguments, seed: int):
    if data_args.train_dir is not None or data_args.validation_dir is not None:
        data_files = {}
        if data_args.train_dir is not None:
            data_files["train"] = os.path.join(data_args.train_dir, "**")
        if data_args.validation_dir is not None:
            data_files["validation"] = os.path.join(data_args.validation_dir, "**")
        dataset = load_dataset("imagefolder", data_files=data_files, cache_dir=model_args.cache_dir)
    elif data_args.dataset_name is not None:
        dataset = load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
    else:
        raise ValueError("give --dataset_name, or --train_dir / --validation_dir")
    if "validation" not in dataset and "train" in dataset and data_args.train_val_split:
        split = dataset["train"].train_test_split(data_args.train_val_split, seed=seed)
        dataset["train"], dataset["validation"] = split["train"], split["test"]
    return dataset


def class_names(dataset, label_column: str) -> list[str]:
    split = dataset["train"] if "train" in dataset else dataset["validation"]
    if label_column not in split.column_names:
        raise ValueError(f"no label column {label_column!r}; columns: {split.column_names} (see --label_column_name)")
    feature = split.features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = split.unique(label_column)
    if not all(isinstance(v, int) and v >= 0 for v in values):
        raise ValueError(f"labels in {label_column!r} must be a ClassLabel or integers >= 0")
    return [str(index) for index in range(max(values) + 1)]


def build_config(model_args: ModelArguments, names: list[str], image_size: int | None):
    id2label = dict(enumerate(names))
    label2id = {name: index for index, name in id2label.items()}
    if model_args.model_name_or_path is not None:
        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
            token=model_args.token,
        )
        config.id2label, config.label2id = id2label, label2id
    elif model_args.config_name in OFFICIAL_NAMES:
        config = PaCaViTConfig.from_official_name(model_args.config_name, id2label=id2label, label2id=label2id)
    else:
        config = PaCaViTConfig.from_pretrained(model_args.config_name, cache_dir=model_args.cache_dir)
        config.id2label, config.label2id = id2label, label2id
    config.problem_type = "single_label_classification"
    if model_args.drop_path_rate is not None:
        config.drop_path_rate = model_args.drop_path_rate
    if image_size is not None:
        config.image_size = image_size
    return config


def build_image_processor(model_args: ModelArguments, aug_args: AugmentationArguments):
    overrides = {}
    if aug_args.image_size is not None:
        overrides["size"] = {"shortest_edge": aug_args.image_size}
        overrides["crop_size"] = {"height": aug_args.image_size, "width": aug_args.image_size}
    if aug_args.crop_pct is not None:
        overrides["crop_pct"] = aug_args.crop_pct
    source = model_args.image_processor_name or model_args.model_name_or_path
    if source is not None:
        try:
            return AutoImageProcessor.from_pretrained(
                source, cache_dir=model_args.cache_dir, revision=model_args.model_revision, token=model_args.token,
                **overrides,
            )
        except (OSError, ValueError) as error:
            if model_args.image_processor_name is not None:
                raise
            logger.warning(f"no image processor in {source} ({error}); using the authors' evaluation transform")
    if "size" not in overrides:
        overrides.update(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    return PaCaViTImageProcessor(**overrides)


def set_mixed_precision(training_args: PaCaTrainingArguments) -> None:
    """Fill in --bf16 / --fp16 from --amp, before the Trainer builds its Accelerator."""
    amp = training_args.amp.lower()
    if amp not in ("auto", "bf16", "fp16", "no"):
        raise ValueError(f"--amp must be auto, bf16, fp16 or no, got {training_args.amp!r}")
    if training_args.bf16 or training_args.fp16 or amp == "no":
        return
    on_cuda = training_args.device.type == "cuda"
    if amp == "auto":
        if not on_cuda:
            return
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "bf16":
        training_args.bf16 = True
    else:
        training_args.fp16 = True
    training_args.mixed_precision = amp


def apply_recipe(training_args: PaCaTrainingArguments, num_train_examples: int | None) -> int:
    """Fill in the recipe's settings that depend on the batch, the data and the device; returns the global batch.

    learning rate = base_learning_rate x global batch / 512 (unless --learning_rate is given); the default scheduler
    gets timm's warm-up and final rates; warm-up steps = warmup_epochs x optimizer steps per epoch (unless
    --warmup_steps is given); mixed precision from --amp."""
    global_batch = (
        training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
        * training_args.world_size
    )
    if training_args.learning_rate is None:
        training_args.learning_rate = training_args.base_learning_rate * global_batch / 512
    if training_args.lr_scheduler_type == "cosine_warmup_with_min_lr" and not training_args.lr_scheduler_kwargs:
        training_args.lr_scheduler_kwargs = dict(RECIPE_SCHEDULER_KWARGS)
    if num_train_examples and training_args.warmup_steps == 0 and training_args.warmup_epochs > 0:
        per_step = training_args.per_device_train_batch_size * training_args.world_size
        batches = math.ceil(num_train_examples / per_step)
        steps_per_epoch = max(1, math.ceil(batches / training_args.gradient_accumulation_steps))
        training_args.warmup_steps = int(round(training_args.warmup_epochs * steps_per_epoch))
    set_mixed_precision(training_args)
    if training_args.device.type == "cpu":
        training_args.dataloader_pin_memory = False
    return global_batch


def main(argv=None):
    model_args, data_args, aug_args, training_args = parse_args(argv)
    if (model_args.model_name_or_path is None) == (model_args.config_name is None):
        raise ValueError("give exactly one of --model_name_or_path (a checkpoint) and --config_name (from scratch)")

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    datasets.utils.logging.set_verbosity(log_level)

    set_seed(training_args.seed)

    dataset = load_data(data_args, model_args, training_args.seed)
    if training_args.do_train and "train" not in dataset:
        raise ValueError("--do_train needs a train split (--train_dir or a Hub dataset with one)")
    if training_args.do_eval and "validation" not in dataset:
        raise ValueError("--do_eval needs a validation split (--validation_dir, or --train_val_split > 0)")
    names = class_names(dataset, data_args.label_column_name)

    image_processor = build_image_processor(model_args, aug_args)
    image_size = image_processor.crop_size.height
    config = build_config(model_args, names, image_size)
    if model_args.model_name_or_path is not None:
        model = AutoModelForImageClassification.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
            token=model_args.token,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        )
    else:
        model = PaCaViTForImageClassification(config)

    train_transform = ImageNetTrainTransform(
        image_size=image_size,
        scale=aug_args.scale,
        ratio=aug_args.ratio,
        hflip=aug_args.hflip,
        auto_augment=aug_args.auto_augment,
        interpolation=aug_args.interpolation,
        mean=image_processor.image_mean,
        std=image_processor.image_std,
        re_prob=aug_args.reprob,
        re_mode=aug_args.remode,
        re_count=aug_args.recount,
    )
    columns = (data_args.image_column_name, data_args.label_column_name)
    preprocess_train = BatchTransform(train_transform, *columns)
    preprocess_eval = BatchTransform(EvalImageTransform(image_processor), *columns)

    train_dataset = eval_dataset = None
    if training_args.do_train:
        train_dataset = dataset["train"]
        if data_args.max_train_samples is not None:
            train_dataset = train_dataset.shuffle(seed=training_args.seed)
            train_dataset = train_dataset.select(range(min(data_args.max_train_samples, len(train_dataset))))
        train_dataset.set_transform(preprocess_train)
    if training_args.do_eval:
        eval_dataset = dataset["validation"]
        if data_args.max_eval_samples is not None:
            eval_dataset = eval_dataset.shuffle(seed=training_args.seed)
            eval_dataset = eval_dataset.select(range(min(data_args.max_eval_samples, len(eval_dataset))))
        eval_dataset.set_transform(preprocess_eval)

    if eval_dataset is None and training_args.eval_strategy != "no":
        training_args.eval_strategy = IntervalStrategy.NO  # --do_eval False: no evaluation during training either
    global_batch = apply_recipe(training_args, None if train_dataset is None else len(train_dataset))
    logger.info(
        f"global batch {global_batch}, learning rate {training_args.learning_rate:.3g}, warm-up "
        f"{training_args.warmup_steps} steps, scheduler {training_args.lr_scheduler_type} "
        f"{training_args.lr_scheduler_kwargs}, mixed precision {training_args.mixed_precision}, "
        f"drop path {config.drop_path_rate}, {len(names)} classes"
    )

    mixup = None
    if aug_args.mixup > 0 or aug_args.cutmix > 0 or aug_args.cutmix_minmax is not None:
        mixup = Mixup(
            num_classes=len(names),
            mixup_alpha=aug_args.mixup,
            cutmix_alpha=aug_args.cutmix,
            cutmix_minmax=aug_args.cutmix_minmax,
            prob=aug_args.mixup_prob,
            switch_prob=aug_args.mixup_switch_prob,
            label_smoothing=training_args.label_smoothing_factor,
        )

    metric = load_metric("accuracy_topk", cache_dir=model_args.cache_dir)

    def compute_metrics(eval_pred):
        predictions = eval_pred.predictions
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]
        return metric.compute(predictions=predictions, references=eval_pred.label_ids, top_k=(1, 5))

    trainer = PaCaTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collate_fn,
        compute_metrics=compute_metrics,
        processing_class=image_processor,
        mixup=mixup,
        label_smoothing=training_args.label_smoothing_factor,
        mixup_seed=training_args.seed + training_args.process_index,
    )

    if training_args.do_train:
        checkpoint = training_args.resume_from_checkpoint
        if isinstance(checkpoint, str) and checkpoint.lower() in ("true", "false"):
            checkpoint = checkpoint.lower() == "true"
        train_result = trainer.train(resume_from_checkpoint=checkpoint or None)
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
    elif trainer.is_world_process_zero():
        model.save_pretrained(training_args.output_dir)
        image_processor.save_pretrained(training_args.output_dir)

    metrics = None
    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return metrics


if __name__ == "__main__":
    main()
