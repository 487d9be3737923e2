"""Segmentation evaluation of the fine-tune: whole-image inference (mmseg `mode="whole"`) through the image processor
saved with the model, so that the figures are those of the deployed model (pipelines included); mIoU with the shipped
`mean_iou` metric."""

import math
import os
import time

import numpy as np
import torch

from ...images import reduce_labels as reduce_label_values
from ...images import same_size_groups


def _processor_input(image):
    """A collated image (`collate_segmentation`: uint8, or float32 on the 0..255 scale for 16-bit / float data) as
    the image processor reads it (float data in [0, 1]); anything else as it is."""
    if isinstance(image, torch.Tensor) and image.is_floating_point():
        return image / 255.0
    return image


@torch.no_grad()
def predict_batch(model, images: list, image_processor, device) -> list[torch.Tensor]:
    """Whole-image inference (mmseg `mode="whole"`) as the deployed model runs it: `image_processor` (the one saved
    with the model) prepares each image, the model runs on the images whose prepared size is the same (each size a
    batch of its own, so no image is padded and each gets the result it gets alone), and the processor's
    `post_process_semantic_segmentation` resizes the logits to the image's size (what `pipeline("image-segmentation")`
    does). The argmax goes through `paca_hf.metrics.class_predictions`, so a pixel with a non-finite score gets
    `num_labels`, which the mIoU counts as wrong.

    Args:
        images: images of any sizes: `(3, H, W)` tensors from `collate_segmentation`, or any input the processor
            takes (PIL images, arrays, paths).
        image_processor: a `PaCaViTImageProcessor` / `PaCaViTImageProcessorPil`.
    Returns:
        one `(H, W)` int64 map of class ids per image, at the image's own size, on `device`.
    """
    from ...metrics import class_predictions

    images = [_processor_input(image) for image in images]
    prepared = image_processor(images, return_tensors=None)["pixel_values"]
    prepared = [torch.as_tensor(pixels) for pixels in prepared]
    predictions = [None] * len(images)
    for indices in same_size_groups(prepared):
        pixel_values = torch.stack([prepared[index] for index in indices]).to(device)
        logits = model(pixel_values=pixel_values).logits.float()
        sizes = [_image_size(images[index]) for index in indices]
        scored = image_processor.post_process_semantic_segmentation(
            {"logits": logits}, target_sizes=sizes, return_segmentation_scores=True
        )
        for index, result in zip(indices, scored):
            predictions[index] = class_predictions(result["segmentation_scores"], dim=0)
    return predictions


def _image_size(image) -> tuple[int, int]:
    """`(height, width)` of a collated `(C, H, W)` image, or of any other input as the package decodes it."""
    if isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] in (1, 3):
        return tuple(image.shape[-2:])
    from ...images import image_to_array

    return tuple(image_to_array(image).shape[:2])


def evaluate_segmentation(
    model,
    dataloader,
    accelerator,
    image_processor,
    num_labels: int,
    reduce_labels: bool,
    ignore_index: int = 255,
    keep_predictions: bool = False,
    disable_progress: bool = True,
) -> tuple[dict, list[tuple[np.ndarray, np.ndarray]] | None]:
    """mIoU of `model` over `dataloader` (prepared by accelerate; batches from `collate_segmentation`, images of any
    sizes) predicted by [`predict_batch`] through `image_processor` (the one saved with the model), computed by the
    shipped `mean_iou` evaluate metric on the main process from predictions gathered with
    `accelerator.gather_for_metrics`. Returns `(metrics, pairs)`; `pairs` (prediction, reference) uint16 arrays
    only with `keep_predictions`. Every process returns the same metrics. `ValueError` when the dataloader holds no
    image."""
    from tqdm.auto import tqdm

    from ...metrics import load_metric

    was_training = model.training
    model.eval()
    metric = load_metric("mean_iou", experiment_id=f"paca-{os.getpid()}-{time.time_ns()}", keep_in_memory=True)
    kept = [] if keep_predictions else None
    evaluated = 0
    for batch in tqdm(dataloader, desc="eval", disable=disable_progress, leave=False):
        predictions = predict_batch(model, batch["images"], image_processor, accelerator.device)
        pairs = []
        for prediction, label in zip(predictions, batch["labels"]):
            reference = reduce_label_values(label, ignore_index) if reduce_labels else label.long()
            pairs.append((prediction.cpu().numpy().astype(np.uint16), reference.cpu().numpy().astype(np.uint16)))
        pairs = accelerator.gather_for_metrics(pairs, use_gather_object=True)
        evaluated += len(pairs)  # gathered: the same count on every process
        if accelerator.is_main_process:
            metric.add_batch(predictions=[p for p, _ in pairs], references=[r for _, r in pairs])
            if kept is not None:
                kept.extend(pairs)
    if evaluated == 0:
        raise ValueError("no images to evaluate: the evaluation dataloader is empty")
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
