"""Training PaCa-ViT, by task: one subpackage per task, and the pieces every task shares here.

* `segmentation/`: the ADE20k fine-tune on accelerate (`paca_hf.training.segmentation`);
* `classification/`: the ImageNet recipe on transformers' `Trainer` with timm (`paca_hf.training.classification`);
* `detection/`: COCO evaluation (pycocotools) and the COCO fine-tune of the Mask R-CNN on accelerate;
* `runner`, `sampling`, `arguments`, `transforms`, `init_report`: what the two accelerate fine-tunes (segmentation,
  detection) share: the `Accelerator`, logging, the final save and stop report; the seeded epoch sampler and batch
  stream; common flag types; image decoding, random draws and resizes; the report of what a checkpoint loaded;
* `checkpoint`: checkpoints written completely (a `COMPLETE` marker) before they replace anything, and resume;
* `optim`, `scheduler`: the recipes' AdamW parameter groups and schedules (warm-up + poly; warm-up + steps);
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
