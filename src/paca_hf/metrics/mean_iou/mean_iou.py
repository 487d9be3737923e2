# Copyright the paca-hf authors. MIT license.
# An `evaluate` metric script (loaded with `evaluate.load(<this file or its folder>)`, no network needed).
# It keeps the contract of the Hub's `mean_iou` metric: same arguments, same keys, same NaN semantics
# (a class with no pixel in either the prediction or the reference gets IoU NaN and is left out of
# the mean through `nanmean`, as mmseg does).
# Only numpy, datasets and evaluate are imported here: `evaluate` copies this single file into its
# module cache, so it must stay self-contained.
"""Mean Intersection-over-Union for semantic segmentation."""

from typing import Optional

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """
Mean IoU for semantic segmentation. For each class c, over all images of the evaluation set,
IoU(c) = |pred == c and ref == c| / |pred == c or ref == c|, counted on pixels whose reference is not
`ignore_index`. `mean_iou` is the mean over the classes whose IoU is defined (a class absent from both
predictions and references has IoU NaN and is skipped). Accuracy(c) = |pred == c and ref == c| / |ref == c|;
`overall_accuracy` is the fraction of non-ignored pixels predicted correctly.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`List[ndarray]`): predicted segmentation maps, each of shape (height, width), int class ids.
    references (`List[ndarray]`): ground-truth maps, each of the same shape as its prediction.
    num_labels (`int`): number of classes.
    ignore_index (`int`): reference value that is not evaluated (e.g. 255).
    nan_to_num (`int` or `float`, optional): replaces NaN in every returned value with this number.
    label_map (`dict`, optional): old id -> new id, applied to the references first.
    reduce_labels (`bool`, default `False`): the reference value 0 becomes `ignore_index`-like 255 and every
        other value is decreased by one (ADE20k's "other" = 0 convention). Applied after `label_map`.
Returns:
    `mean_iou` (float), `mean_accuracy` (float), `overall_accuracy` (float),
    `per_category_iou` (ndarray of shape (num_labels,)), `per_category_accuracy` (ndarray of shape (num_labels,)).
    Prediction pixels whose value is outside [0, num_labels) count as wrong (they enlarge no class's
    predicted area); so do NaN / infinite predictions given to `mean_iou` directly as floats (turn logits into
    predictions with `paca_hf.metrics.class_predictions`, which marks pixels with non-finite scores that way).
    Reference pixels outside [0, num_labels) other than `ignore_index` are not counted.
Examples:
    >>> import numpy as np, evaluate
    >>> metric = evaluate.load("path/to/paca_hf/metrics/mean_iou")
    >>> pred = [np.array([[0, 1], [1, 1]])]
    >>> ref = [np.array([[0, 1], [0, 255]])]
    >>> out = metric.compute(predictions=pred, references=ref, num_labels=2, ignore_index=255)
    >>> round(float(out["mean_iou"]), 4)
    0.5
"""

_CITATION = """
@software{mmseg2020,
    title={{MMSegmentation}: OpenMMLab Semantic Segmentation Toolbox and Benchmark},
    author={MMSegmentation Contributors},
    howpublished={\\url{https://github.com/open-mmlab/mmsegmentation}},
    year={2020}
}
"""


def intersect_and_union(
    pred_label,
    label,
    num_labels: int,
    ignore_index: int,
    label_map: Optional[dict[int, int]] = None,
    reduce_labels: bool = False,
):
    """Per-class areas (intersection, union, prediction, reference) of one image, as int64 arrays."""
    pred_label = np.asarray(pred_label)
    if pred_label.dtype.kind == "f":
        finite = np.isfinite(pred_label)
        if np.any(pred_label[finite] != np.round(pred_label[finite])):
            raise ValueError("predictions must be class ids (integers), got fractional values")
        pred_label = np.where(finite, pred_label, -1)  # a non-finite prediction is no class: wrong
    pred_label = pred_label.astype(np.int64)
    label = np.array(label, dtype=np.int64, copy=True)
    if pred_label.shape != label.shape:
        raise ValueError(f"prediction shape {pred_label.shape} != reference shape {label.shape}")
    if label_map is not None:
        original = label.copy()
        for old_id, new_id in label_map.items():
            label[original == int(old_id)] = int(new_id)
    if reduce_labels:
        zero = label == 0
        label = label - 1
        label[zero] = 255
        label[label == 254] = 255
    valid = label != ignore_index
    pred_label = pred_label[valid]
    label = label[valid]
    # References outside the class range are not counted at all (like the histogram in mmseg).
    in_range = (label >= 0) & (label < num_labels)
    pred_label = pred_label[in_range]
    label = label[in_range]
    correct = pred_label == label
    area_intersect = np.bincount(label[correct], minlength=num_labels)[:num_labels]
    pred_in_range = pred_label[(pred_label >= 0) & (pred_label < num_labels)]
    area_pred_label = np.bincount(pred_in_range, minlength=num_labels)[:num_labels]
    area_label = np.bincount(label, minlength=num_labels)[:num_labels]
    area_union = area_pred_label + area_label - area_intersect
    return area_intersect, area_union, area_pred_label, area_label


def total_intersect_and_union(
    results,
    gt_seg_maps,
    num_labels: int,
    ignore_index: int,
    label_map: Optional[dict[int, int]] = None,
    reduce_labels: bool = False,
):
    """Per-class areas summed over the whole set."""
    if len(results) != len(gt_seg_maps):
        raise ValueError(f"{len(results)} predictions but {len(gt_seg_maps)} references")
    totals = [np.zeros(num_labels, dtype=np.int64) for _ in range(4)]
    for result, gt_seg_map in zip(results, gt_seg_maps):
        areas = intersect_and_union(result, gt_seg_map, num_labels, ignore_index, label_map, reduce_labels)
        for total, area in zip(totals, areas):
            total += area
    return tuple(totals)


def mean_iou(
    results,
    gt_seg_maps,
    num_labels: int,
    ignore_index: int,
    nan_to_num: Optional[float] = None,
    label_map: Optional[dict[int, int]] = None,
    reduce_labels: bool = False,
) -> dict:
    """The metric itself, usable without `evaluate` (numpy in, numpy out)."""
    inter, union, _pred, label = total_intersect_and_union(
        results, gt_seg_maps, num_labels, ignore_index, label_map, reduce_labels
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union.astype(np.float64)
        acc = inter / label.astype(np.float64)
        overall = inter.sum() / float(label.sum()) if label.sum() > 0 else float("nan")
    metrics = {
        "mean_iou": float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan"),
        "mean_accuracy": float(np.nanmean(acc)) if np.any(~np.isnan(acc)) else float("nan"),
        "overall_accuracy": float(overall),
        "per_category_iou": iou,
        "per_category_accuracy": acc,
    }
    if nan_to_num is not None:
        metrics = {
            key: (
                np.nan_to_num(value, nan=nan_to_num)
                if isinstance(value, np.ndarray)
                else float(np.nan_to_num(value, nan=nan_to_num))
            )
            for key, value in metrics.items()
        }
    return metrics


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("uint16"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("uint16"))),
                }
            ),
            reference_urls=["https://github.com/open-mmlab/mmsegmentation"],
        )

    def _compute(
        self,
        predictions,
        references,
        num_labels: int,
        ignore_index: int,
        nan_to_num: Optional[float] = None,
        label_map: Optional[dict[int, int]] = None,
        reduce_labels: bool = False,
    ):
        return mean_iou(
            results=predictions,
            gt_seg_maps=references,
            num_labels=num_labels,
            ignore_index=ignore_index,
            nan_to_num=nan_to_num,
            label_map=label_map,
            reduce_labels=reduce_labels,
        )
