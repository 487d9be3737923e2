"""The `mean_iou` evaluate metric script lives in mean_iou.py (load it with paca_hf.metrics.load_metric)."""
