"""The authors' ImageNet-1k classification recipe on transformers' `Trainer`, with timm's augmentation.

timm (the training extra, `pip install -e ".[train]"`) provides the recipe's pieces, as in the authors' timm
`train.py`: the training transform (`timm.data.create_transform`), Mixup / CutMix (`timm.data.Mixup`) and the
soft-target loss (`timm.loss.SoftTargetCrossEntropy`). `import paca_hf` and the model never import timm; this module
does, at import time.

The command-line arguments (`ModelArguments`, `DataTrainingArguments`, `AugmentationArguments`,
`PaCaTrainingArguments`, `parse_args`) are in `arguments`; the evaluation transform, collate and the image-folder
evaluation of scripts/evaluate_imagenet.py in `evaluation` (neither needs timm).

Randomness and exact resume. Every random draw of the recipe comes from one of two places:

* the data augmentation (RandomResizedCrop, flip, RandAugment, random erasing), which timm draws from Python's
  `random`, NumPy's global generator and torch's global generator. [`ImageNetTrainDataset`] seeds those three
  afresh for every sample from `(seed, epoch, index)` ([`sample_seed`]) and puts the caller's states back
  afterwards, so an augmented sample is a pure function of its seed, epoch and dataset index: the same with any
  number of DataLoader workers or processes ([`DatasetEpochCallback`] gives every process the epoch), and nothing
  of it needs saving in a checkpoint;
* the training step in the main process: Mixup / CutMix (NumPy's global generator) and stochastic depth (torch's),
  which `Trainer` saves with every checkpoint (`rng_state.pth`) and restores on resume. Because fetching a batch no
  longer draws from those generators, `Trainer` restoring them only after it has fetched the first resumed batch
  does not matter: a run interrupted at a checkpoint and resumed ends with the same weights as an uninterrupted one.

A checkpoint is resumed from only when complete: [`PaCaTrainer`] marks each one `COMPLETE` (the fine-tune's marker,
`paca_hf.training.checkpoint`) once it is written, and [`resolve_trainer_checkpoint`] checks the marker.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup, create_transform
from timm.loss import SoftTargetCrossEntropy
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ...configuration_pacavit import OFFICIAL_NAMES, PaCaViTConfig
from ...file_utils import give_normal_permissions
from ...images import load_image
from ..checkpoint import (
    COMPLETE_MARKER,
    TRAINER_CHECKPOINT_NAME,
    prune_checkpoints,
    resolve_resume_checkpoint,
    write_complete_marker,
)
from ..scheduler import whole_run_warmup_warning
from .arguments import AugmentationArguments, DataTrainingArguments, ModelArguments, PaCaTrainingArguments
from .evaluation import EvalTransform, collate_fn


logger = logging.getLogger(__name__)

# timm's warmup_lr (5e-7) and min_lr (5e-6) as fractions of the recipe's base learning rate (5e-4).
RECIPE_SCHEDULER_KWARGS = {"min_lr_rate": 0.01, "warmup_lr_rate": 0.001}


# ----------------------------------------------------------------------------------------------------------
# data


def train_transform(aug_args: AugmentationArguments, image_size: int, mean, std):
    """timm's training transform (`create_transform(is_training=True)`) with the recipe's settings: PIL image ->
    normalised float32 tensor `(3, image_size, image_size)`. As in timm, colour jitter (0.4) is applied only when
    RandAugment is off."""
    auto_augment = aug_args.auto_augment
    if auto_augment is not None and auto_augment.lower() == "none":
        auto_augment = None
    return create_transform(
        input_size=image_size,
        is_training=True,
        scale=tuple(aug_args.scale),
        ratio=tuple(aug_args.ratio),
        hflip=aug_args.hflip,
        auto_augment=auto_augment,
        interpolation=aug_args.interpolation,
        mean=tuple(mean),
        std=tuple(std),
        re_prob=aug_args.reprob,
        re_mode=aug_args.remode,
        re_count=aug_args.recount,
    )


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed (an integer in [0, 2**32)) of one sample's augmentation: NumPy's `SeedSequence([seed, epoch,
    index])`, first 32-bit word."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1)[0])


@contextlib.contextmanager
def seeded_global_rngs(seed: int):
    """Seed Python's `random`, NumPy's global generator and torch's CPU generator with `seed` for the block, and put
    their previous states back afterwards."""
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


class ImageNetTrainDataset(torch.utils.data.Dataset):
    """Training examples `{pixel_values, labels}` of a `datasets.Dataset` with image and label columns: each image
    decoded by `paca_hf.images.load_image` (8-bit RGB, EXIF orientation applied) and augmented with a global-RNG
    transform (timm's) under [`seeded_global_rngs`]`(`[`sample_seed`]`(seed, epoch, index))`.

    `set_epoch` is called at the start of every epoch by [`DatasetEpochCallback`] (which [`PaCaTrainer`] installs),
    so that every epoch augments afresh in every process. The epoch is kept in shared memory, so that DataLoader
    workers that outlive an epoch (`persistent_workers`, with their own copy of the dataset) see it change too."""

    def __init__(self, dataset, transform, seed: int, image_column: str = "image", label_column: str = "label"):
        self.dataset = dataset
        self.transform = transform
        self.seed = int(seed)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.image_column = image_column
        self.label_column = label_column

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        example = self.dataset[int(index)]
        image = load_image(example[self.image_column])
        with seeded_global_rngs(sample_seed(self.seed, self.epoch, index)):
            pixel_values = self.transform(image)
        return {"pixel_values": pixel_values, "labels": int(example[self.label_column])}


def load_data(data_args: DataTrainingArguments, model_args: ModelArguments, seed: int):
    """The `datasets.DatasetDict` to train / evaluate on: image folders (imagefolder layout) or a Hub dataset, with a
    validation split held out of train (`--train_val_split`) when there is none."""
    from datasets import load_dataset

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
    """Class names of a `DatasetDict` (a `ClassLabel` column's names, else "0".."max label")."""
    from datasets import ClassLabel

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


# ----------------------------------------------------------------------------------------------------------
# model, processor and recipe settings


def build_config(model_args: ModelArguments, names: list[str], image_size: int | None):
    """The model config: from the checkpoint, an official name or a config file, with the classes `names`."""
    from transformers import AutoConfig

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
    """The evaluation image processor: `--image_processor_name` (which must hold one), else the checkpoint's, else
    the authors' transform (`paca_hf.loading`), with `--image_size` (resize and crop) and `--crop_pct` applied."""
    from transformers import AutoImageProcessor

    from ...loading import default_image_processor, load_image_processor

    hub_kwargs = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token}
    if model_args.image_processor_name is not None:
        processor = AutoImageProcessor.from_pretrained(model_args.image_processor_name, **hub_kwargs)
    elif model_args.model_name_or_path is not None:
        processor = load_image_processor(model_args.model_name_or_path, **hub_kwargs)
    else:
        processor = default_image_processor()
    overrides = {}
    if aug_args.image_size is not None:
        overrides["size"] = {"shortest_edge": aug_args.image_size}
        overrides["crop_size"] = {"height": aug_args.image_size, "width": aug_args.image_size}
    if aug_args.crop_pct is not None:
        overrides["crop_pct"] = aug_args.crop_pct
    return type(processor).from_dict(processor.to_dict(), **overrides) if overrides else processor


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
        training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
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


def build_mixup(aug_args: AugmentationArguments, num_classes: int, label_smoothing: float) -> Mixup | None:
    """timm's `Mixup` (one draw per batch) with the recipe's settings, or None when Mixup and CutMix are off."""
    if aug_args.mixup <= 0 and aug_args.cutmix <= 0 and aug_args.cutmix_minmax is None:
        return None
    return Mixup(
        mixup_alpha=aug_args.mixup,
        cutmix_alpha=aug_args.cutmix,
        cutmix_minmax=aug_args.cutmix_minmax,
        prob=aug_args.mixup_prob,
        switch_prob=aug_args.mixup_switch_prob,
        mode="batch",
        label_smoothing=label_smoothing,
        num_classes=num_classes,
    )


# ----------------------------------------------------------------------------------------------------------
# Trainer


class NormalPermissionsCallback(TrainerCallback):
    """After every save, the output folder's files get the user's usual modes (safetensors writes 0o600 files;
    see `paca_hf.file_utils.give_normal_permissions`). Only the global first process touches the shared folder."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            give_normal_permissions(args.output_dir)


class DatasetEpochCallback(TrainerCallback):
    """At the start of every epoch, `set_epoch(epoch)` on the training dataset (when it has one), before the epoch's
    data loader iterator (and its worker processes) is made.

    Trainer leaves this to accelerate's `DataLoaderShard.set_epoch`, which reaches the dataset only in a single
    process: in a distributed run its sampler is a `BatchSamplerShard` around a seedable sampler, and then it
    updates the sampler instead of the dataset, so every process would augment every epoch as epoch 0. The epoch
    is Trainer's own count (`state.epoch` is `epoch + finished batches / batches per epoch`, and a whole number at an
    epoch's start); a resumed run restarts inside its checkpoint's epoch."""

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        dataset = getattr(train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(math.floor(state.epoch or 0))


class ShortRunWarningCallback(TrainerCallback):
    """At the start of training, a warning when the whole run falls in the warm-up (e.g. a short test run under the
    recipe's 5 warm-up epochs), naming the highest learning rate it reaches: the scheduler's own factor at the last
    step (any `LambdaLR` scheduler of Trainer's) times the learning rate. From the global first process only."""

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        factors = getattr(lr_scheduler, "lr_lambdas", None)
        if not state.is_world_process_zero or not factors:
            return
        warmup_steps, total_steps = args.get_warmup_steps(state.max_steps), state.max_steps
        message = whole_run_warmup_warning(
            warmup_steps, total_steps, args.learning_rate, factors[0],
            warmup=f"The warm-up ({warmup_steps} steps, from --warmup_epochs or --warmup_steps)",
            run=f"the run ({total_steps} steps, from --num_train_epochs or --max_steps)",
            where="at the last step", advice="Lower --warmup_epochs, or give --warmup_steps, for a short run.",
        )  # fmt: skip
        if message is not None:
            logger.warning(message)


class PaCaTrainer(Trainer):
    """`Trainer` with the recipe's loss: timm's Mixup / CutMix on the batch and soft-target cross-entropy in
    training, cross-entropy in evaluation, and timm's weight-decay groups (no decay on biases and 1-d parameters).

    timm's batch Mixup pairs sample i with sample N - 1 - i and needs an even batch: the last sample of an odd
    training batch is left out of that step (timm's own loader drops the whole last partial batch instead).
    [`DatasetEpochCallback`] is always installed: the training dataset learns every epoch in every process; so is
    [`ShortRunWarningCallback`].

    Checkpoints (`checkpoint-N`) get the fine-tune's `COMPLETE` marker (`paca_hf.training.checkpoint`: every file's
    size and sha256, written last), so that a checkpoint interrupted while being saved is never resumed from (see
    [`resolve_trainer_checkpoint`]), and `save_total_limit` prunes complete checkpoints only, after the new one is
    marked (Trainer's own rotation counts unfinished ones and runs before the marker could be written)."""

    # compute_loss returns a per-batch mean; Trainer divides it by the gradient accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, mixup: Mixup | None = None, label_smoothing: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.mixup = mixup
        self.label_smoothing = float(label_smoothing)
        self.soft_target_loss = SoftTargetCrossEntropy()
        self.add_callback(DatasetEpochCallback())
        self.add_callback(ShortRunWarningCallback())

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer's checkpoint, then (every process done) its `COMPLETE` marker, then pruning to save_total_limit."""
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            # The marker of an earlier save of this step (a resumed run saves it again) must not vouch for new files.
            (folder / COMPLETE_MARKER).unlink(missing_ok=True)
        total_limit = self.args.save_total_limit
        self.args.save_total_limit = None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = total_limit
        self.accelerator.wait_for_everyone()  # every process has written its own RNG state
        if not self.args.should_save:
            return
        write_complete_marker(folder, {"step": self.state.global_step})
        if total_limit is not None and total_limit > 0:
            best = self.state.best_model_checkpoint
            prune_checkpoints(
                folder.parent,
                keep=total_limit,
                protect=[folder] + ([best] if best else []),
                name_pattern=TRAINER_CHECKPOINT_NAME,
            )

    def get_decay_parameter_names(self, model) -> list[str]:
        return [name for name, param in model.named_parameters() if param.ndim > 1 and not name.endswith(".bias")]

    def is_local_process_zero(self) -> bool:
        """The process that prints (`PrinterCallback`'s loss lines): with `--log_on_each_node false` (the recipe's
        default) only the global first process, not the first one of every machine."""
        return super().is_local_process_zero() and (self.args.log_on_each_node or self.is_world_process_zero())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        if labels is None:
            raise ValueError("PaCaTrainer needs `labels` in every batch")
        pixel_values = inputs.pop("pixel_values")
        mixing = model.training and self.mixup is not None and self.mixup.mixup_enabled
        if mixing:
            even = len(pixel_values) - len(pixel_values) % 2
            if even == 0:
                raise ValueError("Mixup needs at least two images per training batch")
            pixel_values, targets = self.mixup(pixel_values[:even].clone(), labels[:even])
        outputs = model(pixel_values=pixel_values, **inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        if mixing:
            loss = self.soft_target_loss(logits.float(), targets.to(logits.device).float())
        else:
            smoothing = self.label_smoothing if model.training else 0.0
            loss = F.cross_entropy(logits.float(), labels.to(logits.device).long(), label_smoothing=smoothing)
        return (loss, outputs) if return_outputs else loss


# ----------------------------------------------------------------------------------------------------------
# the training run (scripts/train_imagenet.py)


def setup_logging(training_args: PaCaTrainingArguments) -> None:
    """Log levels of a run (scripts/train_imagenet.py): transformers and datasets at Trainer's level for this process
    (`--log_level` / `--log_level_replica`, `TrainingArguments.get_process_log_level`); paca_hf's recipe lines (the
    global batch and learning rate, checkpoints skipped) at INFO on the process that logs (the global first one, or
    each machine's first with --log_on_each_node) unless --log_level names another level, and at the replicas'
    level elsewhere. Adds a stdout handler when the root logger has none."""
    import datasets
    import transformers

    if not logging.getLogger().handlers:
        logging.basicConfig(
            format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
            datefmt="%m/%d/%Y %H:%M:%S",
            handlers=[logging.StreamHandler(sys.stdout)],
        )
    log_level = training_args.get_process_log_level()
    passive = training_args.log_level == "passive"
    logging.getLogger("paca_hf").setLevel(logging.INFO if training_args.should_log and passive else log_level)
    transformers.utils.logging.set_verbosity(log_level)
    datasets.utils.logging.set_verbosity(log_level)


def resolve_trainer_checkpoint(value, output_dir, log: bool = True) -> str | None:
    """The checkpoint folder for `--resume_from_checkpoint` (`value`), verified against its `COMPLETE` marker, and
    (with `log`) which one it is and what was skipped, logged:

    * `true` / `latest`: the newest complete `checkpoint-N` in `output_dir`, skipping (with a warning naming each)
      the ones interrupted while being saved or damaged since (Trainer itself would take the highest N); none at all:
      training starts from the beginning, with a warning; only broken ones: `CheckpointError`;
    * a folder: it must be complete and intact, else `CheckpointError` naming it and what is wrong;
    * `false`, empty or None: no resume.
    """
    if value is None or isinstance(value, bool):
        value = "latest" if value else None
    elif value.strip().lower() in ("", "false"):
        value = None
    elif value.strip().lower() in ("true", "latest"):
        value = "latest"
    folder, warnings = resolve_resume_checkpoint(value, output_dir, name_pattern=TRAINER_CHECKPOINT_NAME)
    if log:
        for warning in warnings:
            logger.warning(warning)
        if folder is not None:
            logger.info(f"Resuming from {folder}")
    return None if folder is None else str(folder)


def _limit(dataset, max_samples: int | None, seed: int):
    if max_samples is None:
        return dataset
    dataset = dataset.shuffle(seed=seed)
    return dataset.select(range(min(max_samples, len(dataset))))


def train_and_evaluate(model_args, data_args, aug_args, training_args) -> dict | None:
    """Train (`--do_train`) and evaluate (`--do_eval`) as scripts/train_imagenet.py does; returns the evaluation
    metrics (None without --do_eval). Writes the model, image processor and `*_results.json` to --output_dir."""
    from transformers import AutoModelForImageClassification, set_seed
    from transformers.trainer_utils import IntervalStrategy

    from ...metrics import load_metric
    from ...modeling_pacavit import PaCaViTForImageClassification

    if (model_args.model_name_or_path is None) == (model_args.config_name is None):
        raise ValueError("give exactly one of --model_name_or_path (a checkpoint) and --config_name (from scratch)")
    set_seed(training_args.seed)
    # Resolve the checkpoint before anything is written: a broken one stops the run here.
    checkpoint = None
    if training_args.do_train:
        checkpoint = resolve_trainer_checkpoint(
            training_args.resume_from_checkpoint, training_args.output_dir, log=training_args.should_log
        )

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
    # Mixup / CutMix and stochastic depth draw from the global generators: one stream per process, as timm's
    # per-rank seeds give (the weights themselves are rank 0's under DDP).
    set_seed(training_args.seed + training_args.process_index)

    columns = (data_args.image_column_name, data_args.label_column_name)
    train_dataset = eval_dataset = None
    if training_args.do_train:
        transform = train_transform(aug_args, image_size, image_processor.image_mean, image_processor.image_std)
        train_dataset = ImageNetTrainDataset(
            _limit(dataset["train"], data_args.max_train_samples, training_args.seed),
            transform,
            seed=training_args.seed,
            image_column=columns[0],
            label_column=columns[1],
        )
    if training_args.do_eval:
        eval_dataset = _limit(dataset["validation"], data_args.max_eval_samples, training_args.seed)
        eval_dataset.set_transform(EvalTransform(image_processor, *columns))

    if eval_dataset is None and training_args.eval_strategy != "no":
        training_args.eval_strategy = IntervalStrategy.NO  # --do_eval False: no evaluation during training either
    global_batch = apply_recipe(training_args, None if train_dataset is None else len(train_dataset))
    scheduler = getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)  # enum -> name
    logger.info(
        f"global batch {global_batch}, learning rate {training_args.learning_rate:.3g}, warm-up "
        f"{training_args.warmup_steps} steps, scheduler {scheduler} "
        f"{training_args.lr_scheduler_kwargs}, mixed precision {training_args.mixed_precision}, "
        f"drop path {config.drop_path_rate}, {len(names)} classes"
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
        mixup=build_mixup(aug_args, len(names), training_args.label_smoothing_factor),
        label_smoothing=training_args.label_smoothing_factor,
        callbacks=[NormalPermissionsCallback()],
    )

    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
    elif trainer.is_world_process_zero():
        model.save_pretrained(training_args.output_dir)
        image_processor.save_pretrained(training_args.output_dir)
    if trainer.is_world_process_zero():
        give_normal_permissions(training_args.output_dir)

    metrics = None
    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return metrics
