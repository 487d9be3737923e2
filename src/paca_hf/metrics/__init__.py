"""Evaluation metrics shipped with paca-hf as local `evaluate` scripts, so no script touches the Hub.

    >>> from paca_hf.metrics import load_metric
    >>> miou = load_metric("mean_iou")        # same contract as the Hub's "mean_iou"
    >>> topk = load_metric("accuracy_topk")   # top1/top5 from score rows
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


__all__ = ["METRIC_NAMES", "load_metric", "metric_path"]
