"""Speed and memory of PaCa-ViT against transformers' Swin-T and PVTv2 (scripts/benchmark.py).

* `models`: the compared models and the `Runner` that runs one inference or training step;
* `memory`: peak memory of one step (CUDA allocator, or CPU resident set size in a subprocess);
* `results`: statistics, the printed report, CSV files and the scaling plot;
* `cli`: the command line and the interleaved timing loop (`python -m paca_hf.benchmarking`).
"""
