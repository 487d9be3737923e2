#!/usr/bin/env bash
# One-shot GPU check of PaCa-ViT on one H100/H200-class GPU (about 5 minutes), printing one table:
#   bf16 inference images/s at 224, batch 128 (SDPA; eager and torch.compile): PaCa-Tiny/Small/Base, Swin-T, PVTv2-b2
#   bf16 training step of the ADE20k segmentor at 512, batch 8 (images/s, peak memory) vs Segformer-B2
#   PaCa-Tiny's Mix-FFN in bands (chunk_size_feed_forward=4096) and over the whole map (=0), in both of the above
#   50 steps of finetune_ade20k.py --mixed_precision bf16 on the built-in scenes (finite loss, saved model)
#
#   scripts/device_check.sh                      # on the GPU machine; outputs/device_check/device_check.txt
#   scripts/device_check.sh --cpu --quick        # dry mode: the same steps on the CPU at toy sizes (seconds)
#   scripts/device_check.sh --output-dir DIR
#
# PYTHON selects the interpreter (default: python3 on PATH, or this checkout's .venv when it exists).
# Exit status 0 when every step ran and the fine-tune ended with a finite loss and a saved model.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m paca_hf.benchmarking.device_check "$@"
