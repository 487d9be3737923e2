"""The `accuracy_topk` evaluate metric script lives in accuracy_topk.py (load it with paca_hf.metrics.load_metric)."""
