"""Evaluation metrics shipped with paca-hf as local `evaluate` scripts, so no script touches the Hub.

    >>> from paca_hf.metrics import load_metric
    >>> miou = load_metric("mean_iou")        # same contract as the Hub's "mean_iou"
    >>> topk = load_metric("accuracy_topk")   # top1/top5 from score rows

`paca_hf.metrics.cluster_nmi` is a plain module (not an `evaluate` script): the NMI between PaCa-ViT's hard cluster
maps and label maps, per stage (scripts/cluster_nmi.py).

Non-finite scores never count as correct: `accuracy_topk` counts a row with NaN or inf as wrong, and
[`class_predictions`] turns segmentation logits into class maps in which such pixels are wrong for `mean_iou`.
"""

import os


METRIC_NAMES = ("mean_iou", "accuracy_topk")
_HERE = os.path.dirname(os.path.abspath(__file__))


def metric_path(name: str) -> str:
    """Path of the shipped metric script `name` (a file `evaluate.load` accepts)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; shipped metrics: {', '.join(METRIC_NAMES)}")
    return os.path.join(_HERE, name, f"{name}.py")


def load_metric(name: str, **kwargs):
    """`evaluate.load` of the shipped metric `name` (local file, no network). kwargs go to `evaluate.load`."""
    import evaluate  # imported lazily: `evaluate` pulls in transformers and takes seconds to import

    return evaluate.load(metric_path(name), **kwargs)


def class_predictions(scores, dim: int = 1):
    """Predicted class ids from class scores (logits or probabilities) along `dim`, for the metrics: the argmax
    (ties: lowest index), except that a position whose scores are not all finite (NaN, +inf, -inf) gets
    `num_classes = scores.shape[dim]`, an id outside [0, num_classes) that `mean_iou` counts as wrong and that
    matches no reference. A torch tensor in, an int64 tensor out (`dim` removed); a diverged model scores 0.

    >>> class_predictions(torch.tensor([[[0.1]], [[0.9]]]), dim=0)   # (classes, height, width) -> (height, width)
    tensor([[1]])
    """
    import torch

    scores = torch.as_tensor(scores)
    predictions = scores.argmax(dim=dim)
    broken = ~torch.isfinite(scores).all(dim=dim)
    return predictions.masked_fill(broken, scores.shape[dim])


__all__ = ["METRIC_NAMES", "class_predictions", "load_metric", "metric_path"]
