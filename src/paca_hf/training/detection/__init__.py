"""Detection and instance segmentation on COCO-format data.

* `evaluation`: COCO box and mask AP through pycocotools (`COCOeval`): annotations checked and loaded, predictions
  turned into COCO's results format (categories matched to the model's labels by name), scoring; batched inference
  through the model's own image processor; the command line of `scripts/evaluate_coco.py`.

pycocotools comes with the `detection` extra (`pip install paca-hf[detection]`); it is imported when first used.
"""

from .evaluation import (
    IOU_TYPES,
    METRIC_NAMES,
    category_ids_by_label,
    check_coco_annotations,
    coco_results,
    evaluate_coco_model,
    evaluate_coco_results,
    image_files,
    load_coco_annotations,
    predict_coco_images,
    write_coco_results,
)


__all__ = [
    "IOU_TYPES",
    "METRIC_NAMES",
    "category_ids_by_label",
    "check_coco_annotations",
    "coco_results",
    "evaluate_coco_results",
    "image_files",
    "evaluate_coco_model",
    "load_coco_annotations",
    "predict_coco_images",
    "write_coco_results",
]
