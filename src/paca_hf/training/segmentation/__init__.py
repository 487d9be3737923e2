"""Semantic segmentation training: the ADE20k fine-tune of the authors' recipe (mmseg
`pacahead_*_512x512_160k_ade20k`) on accelerate. Each module is one job; `finetune` puts them together.

* `data`: `image` / `annotation` datasets (Hub id, local folder, built-in scenes), class names, the seeded epoch
  sampler, collate;
* `augmentation`: mmseg's ADE20k training augmentation, on tensors (no library has it);
* `model`: the model built from a converted checkpoint or a config, and the image processor saved with it;
* `evaluation`: whole-image inference through the saved image processor, and mIoU;
* `arguments`: every flag of `scripts/finetune_ade20k.py`, with the recipe as defaults;
* `finetune`: `parse_args` / `main` of `scripts/finetune_ade20k.py`;
* `demo`: the `make demo` recipe (a narrow model fine-tuned on the built-in scenes).

The shared pieces (checkpoints, optimiser groups, schedule, errors, launch checks) are in `paca_hf.training`.
Importing this package needs no timm.
"""

from .augmentation import SegmentationTrainAugment
from .data import BUILTIN_SCENES, EpochSampler, collate_segmentation, load_segmentation_splits, resolve_id2label
from .evaluation import evaluate_segmentation, predict_batch
from .model import InitReport, build_model, parse_num_clusters, recipe_image_processor


__all__ = [
    "BUILTIN_SCENES",
    "EpochSampler",
    "InitReport",
    "SegmentationTrainAugment",
    "build_model",
    "collate_segmentation",
    "evaluate_segmentation",
    "load_segmentation_splits",
    "parse_num_clusters",
    "predict_batch",
    "recipe_image_processor",
    "resolve_id2label",
]
