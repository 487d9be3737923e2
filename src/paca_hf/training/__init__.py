"""Training PaCa-ViT, by task: one subpackage per task, and the pieces every task shares here.

* `segmentation/`: the ADE20k fine-tune on accelerate (`paca_hf.training.segmentation`);
* `classification/`: the ImageNet recipe on transformers' `Trainer` with timm (`paca_hf.training.classification`);
* `checkpoint`: checkpoints written completely (a `COMPLETE` marker) before they replace anything, and resume;
* `optim`, `scheduler`: the recipe's AdamW parameter groups and warm-up + poly schedule;
* `errors`: the run's errors and the non-finite guards;
* `distributed`: how a run was launched (a distributed run on CPUs, a multi-machine launch that would train each
  machine alone, FSDP without GPUs);
* `throughput`: the share of each training step spent waiting for data.

Importing this package needs no timm.
"""

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
from .errors import CheckpointError, NonFiniteError, TrainingError
from .optim import param_groups
from .scheduler import PolyWithWarmup, make_scheduler

__all__ = [
    "COMPLETE_MARKER",
    "CheckpointError",
    "NonFiniteError",
    "PolyWithWarmup",
    "TrainingError",
    "TrainingState",
    "find_latest_checkpoint",
    "list_checkpoints",
    "make_scheduler",
    "param_groups",
    "partial_saves",
    "resolve_resume_checkpoint",
    "save_checkpoint",
    "verify_checkpoint",
    "weight_checksums",
]
