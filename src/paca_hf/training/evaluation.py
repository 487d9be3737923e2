"""Segmentation evaluation of the fine-tune: whole-image inference (mmseg `mode="whole"`), logits upsampled to each
label map, mIoU with the shipped `mean_iou` metric."""

import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..images import reduce_labels as reduce_label_values


@torch.no_grad()
def predict_batch(model, images: list[torch.Tensor], eval_transform, device) -> list[torch.Tensor]:
    """Whole-image inference (mmseg `mode="whole"`): resize + normalise + pad (the eval transform), logits upsampled
    to the padded input, cropped to each image's resized area, then resized bilinearly to the image's original
    size; argmax through `paca_hf.metrics.class_predictions`, so a pixel with a non-finite score gets `num_labels`,
    which the mIoU counts as wrong. Returns one (H, W) int64 map per image (on `device`)."""
    from ..metrics import class_predictions

    pixel_values, sizes = eval_transform(images, device=device)
    logits = model(pixel_values=pixel_values).logits.float()
    logits = F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
    predictions = []
    for index, (image, (height, width)) in enumerate(zip(images, sizes)):
        cropped = logits[index : index + 1, :, :height, :width]
        original = tuple(image.shape[-2:])
        if tuple(cropped.shape[-2:]) != original:
            cropped = F.interpolate(cropped, size=original, mode="bilinear", align_corners=False)
        predictions.append(class_predictions(cropped[0], dim=0))
    return predictions


def evaluate_segmentation(
    model,
    dataloader,
    accelerator,
    eval_transform,
    num_labels: int,
    reduce_labels: bool,
    ignore_index: int = 255,
    keep_predictions: bool = False,
    disable_progress: bool = True,
) -> tuple[dict, list[tuple[np.ndarray, np.ndarray]] | None]:
    """mIoU of `model` over `dataloader` (prepared by accelerate; batches from `collate_segmentation`), computed by
    the shipped `mean_iou` evaluate metric on the main process from predictions gathered with
    `accelerator.gather_for_metrics`. Returns `(metrics, pairs)`; `pairs` (prediction, reference) uint16 arrays
    only with `keep_predictions`. Every process returns the same metrics."""
    from tqdm.auto import tqdm

    from ..metrics import load_metric

    was_training = model.training
    model.eval()
    metric = load_metric("mean_iou", experiment_id=f"paca-{os.getpid()}-{time.time_ns()}", keep_in_memory=True)
    kept = [] if keep_predictions else None
    for batch in tqdm(dataloader, desc="eval", disable=disable_progress, leave=False):
        predictions = predict_batch(model, batch["images"], eval_transform, accelerator.device)
        pairs = []
        for prediction, label in zip(predictions, batch["labels"]):
            reference = reduce_label_values(label, ignore_index) if reduce_labels else label.long()
            pairs.append((prediction.cpu().numpy().astype(np.uint16), reference.cpu().numpy().astype(np.uint16)))
        pairs = accelerator.gather_for_metrics(pairs, use_gather_object=True)
        if accelerator.is_main_process:
            metric.add_batch(predictions=[p for p, _ in pairs], references=[r for _, r in pairs])
            if kept is not None:
                kept.extend(pairs)
    results = None
    if accelerator.is_main_process:
        results = metric.compute(num_labels=num_labels, ignore_index=ignore_index, reduce_labels=False)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        holder = [results]
        broadcast_object_list(holder, from_process=0)
        results = holder[0]
    if was_training:
        model.train()
    return results, kept


def metrics_to_json(metrics: dict, id2label: dict[int, str], prefix: str = "eval_") -> dict:
    """JSON-safe metrics (NaN -> None), per-category values keyed by class name."""

    def clean(value):
        value = float(value)
        return None if math.isnan(value) else value

    out = {}
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        out[prefix + key] = clean(metrics[key])
    for key in ("per_category_iou", "per_category_accuracy"):
        if key in metrics:
            out[prefix + key] = {id2label.get(i, str(i)): clean(v) for i, v in enumerate(metrics[key])}
    return out
