# Copyright the paca-hf authors. MIT license.
# An `evaluate` metric script (loaded with `evaluate.load(<this file or its folder>)`, no network needed).
# Only numpy, datasets and evaluate are imported here: `evaluate` copies this single file into its
# module cache, so it must stay self-contained.
"""Top-k classification accuracy from score rows (logits or probabilities)."""

from collections.abc import Sequence

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """
Top-k accuracy: the fraction of samples whose true class is among the k highest scores of its row.

Ties count against the sample: the true class's rank is the number of *other* classes scoring at least as
high, so a constant row (a dead model) is wrong for every k smaller than the number of classes.
A row holding any non-finite score (NaN, +inf or -inf) is a broken output and counts as wrong for every k:
a diverged model scores 0, never 1 (every comparison with NaN is False, so NaN would otherwise rank first).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`List[List[float]]`): one row of class scores (logits, probabilities) per sample.
    references (`List[int]`): the true class index of each sample.
    top_k (`Sequence[int]`, default `(1, 5)`): the k values to report.
Returns:
    `top{k}` (float in [0, 1]) for each k in `top_k`, e.g. `top1` and `top5`.
Examples:
    >>> import evaluate
    >>> metric = evaluate.load("path/to/paca_hf/metrics/accuracy_topk")
    >>> metric.compute(predictions=[[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], references=[2, 0], top_k=(1, 2))
    {'top1': 0.5, 'top2': 1.0}
"""

_CITATION = ""

# The rank given to a row holding a non-finite score: larger than any k.
BROKEN_ROW_RANK = np.iinfo(np.int64).max


def true_class_rank(scores, labels) -> np.ndarray:
    """0-based rank of each sample's true class in its row: the number of other classes scoring at least as high
    (ties count against the sample). A row with any non-finite score gets rank `BROKEN_ROW_RANK` (the largest
    int64: in no top k, even for k >= num_classes).

    Raises `ValueError` for shapes other than scores (N, C) and labels (N,), or labels outside [0, C)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ValueError(f"expected scores (N, C) and labels (N,), got {scores.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise ValueError("a reference is outside [0, num_classes)")
    rows = np.arange(scores.shape[0])
    true_score = scores[rows, labels][:, None]
    at_least_as_high = scores >= true_score
    at_least_as_high[rows, labels] = False
    rank = at_least_as_high.sum(axis=1)
    rank[~np.isfinite(scores).all(axis=1)] = BROKEN_ROW_RANK
    return rank


def topk_accuracy(scores, labels, top_k: Sequence[int] = (1, 5)) -> dict:
    """The metric itself, usable without `evaluate`."""
    if isinstance(top_k, int):
        top_k = (top_k,)
    rank = true_class_rank(scores, labels)
    if rank.size == 0:
        return {f"top{int(k)}": float("nan") for k in top_k}
    return {f"top{int(k)}": float(np.mean(rank < int(k))) for k in top_k}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AccuracyTopk(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, top_k: Sequence[int] = (1, 5)):
        return topk_accuracy(predictions, references, top_k=top_k)
