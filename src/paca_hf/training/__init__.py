"""Training PaCa-ViT, by concept. Each module is one job; the ADE20k fine-tune (`finetune`) puts them together.

* `data`: `image` / `annotation` datasets, class names, the seeded epoch sampler, collate;
* `augment_segmentation`: mmseg's ADE20k training augmentation, on tensors;
* `optim`, `scheduler`: the recipe's AdamW parameter groups and warm-up + poly schedule;
* `segmentation`: the model built from a converted checkpoint or a config, and the image processor saved with it;
* `checkpoint`: checkpoints written completely (a `COMPLETE` marker) before they replace anything, and resume;
* `evaluation`: whole-image inference through the saved image processor, and mIoU;
* `errors`: the run's errors and the non-finite guards;
* `distributed`: how a run was launched (a distributed run on CPUs, a multi-machine launch that would train each
  machine alone, FSDP without GPUs);
* `finetune`: `parse_args` / `main` of `scripts/finetune_ade20k.py`.

Importing this package needs neither timm nor accelerate.
"""

from .augment_segmentation import SegmentationTrainAugment
from .checkpoint import (
    COMPLETE_MARKER,
    TrainingState,
    find_latest_checkpoint,
    list_checkpoints,
    partial_saves,
    resolve_resume_checkpoint,
    save_checkpoint,
    verify_checkpoint,
    weight_checksums,
)
from .data import BUILTIN_SCENES, EpochSampler, collate_segmentation, load_segmentation_splits, resolve_id2label
from .errors import CheckpointError, NonFiniteError, TrainingError
from .evaluation import evaluate_segmentation, predict_batch
from .optim import param_groups
from .scheduler import PolyWithWarmup, make_scheduler
from .segmentation import InitReport, build_model, parse_num_clusters, recipe_image_processor

__all__ = [
    "BUILTIN_SCENES",
    "COMPLETE_MARKER",
    "CheckpointError",
    "EpochSampler",
    "InitReport",
    "NonFiniteError",
    "PolyWithWarmup",
    "SegmentationTrainAugment",
    "TrainingError",
    "TrainingState",
    "build_model",
    "collate_segmentation",
    "evaluate_segmentation",
    "find_latest_checkpoint",
    "list_checkpoints",
    "load_segmentation_splits",
    "make_scheduler",
    "param_groups",
    "parse_num_clusters",
    "partial_saves",
    "predict_batch",
    "recipe_image_processor",
    "resolve_id2label",
    "resolve_resume_checkpoint",
    "save_checkpoint",
    "verify_checkpoint",
    "weight_checksums",
]
