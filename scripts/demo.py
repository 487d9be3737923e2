#!/usr/bin/env python
"""`make demo`: convert one of the authors' reference checkpoints and use it through transformers.

What this shows: the converter turns an authors'-format checkpoint into a transformers folder whose outputs match
the authors' code (checked here against their saved outputs), and the folder works with the Auto classes and the
image-classification pipeline. The reference model has random weights (the authors' released ImageNet weights
cannot be downloaded here), so its class predictions are meaningless: that is not what the demo is about.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import pipeline

import paca_hf  # noqa: F401  (registers PaCa-ViT with the Auto classes)
from paca_hf import PaCaViTForImageClassification
from paca_hf.convert import config_from_authors_settings, convert_checkpoint

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
OUTPUT = ROOT / "outputs" / "demo"


def main() -> int:
    name = "cls_conv_stagewise"
    if not (REFERENCE / f"{name}.pth").is_file():
        print(f"error: {REFERENCE}/{name}.pth not found (the demo needs ../shared/reference)", file=sys.stderr)
        return 1
    case = json.loads((REFERENCE / "cases.json").read_text())[name]
    folder = OUTPUT / "pacavit-reference"
    config = config_from_authors_settings(case["arch"], case["paca"], drop_path_rate=0.0, num_labels=case["num_classes"])
    convert_checkpoint(REFERENCE / f"{name}.pth", config, folder)
    print(f"converted {name}.pth -> {folder.relative_to(ROOT)}: {sorted(p.name for p in folder.iterdir())}")

    model = PaCaViTForImageClassification.from_pretrained(folder).eval()
    io = load_file(REFERENCE / f"{name}.io.safetensors")
    for index in range(2):
        with torch.no_grad():
            logits = model(io[f"input_{index}"]).logits
        difference = (logits - io[f"output_{index}_logits"]).abs().max().item()
        shape = tuple(io[f"input_{index}"].shape)
        print(f"input {shape}: max |ours - authors'| = {difference:.2e} (tolerance 1e-4)")
        if difference > 1e-4:
            return 1

    y, x = np.mgrid[0:180, 0:240]
    picture = np.stack([x * 255 // 240, y * 255 // 180, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    classify = pipeline("image-classification", model=str(folder), device="cpu")
    print("pipeline('image-classification') on a 240x180 picture (random weights, labels meaningless):")
    for prediction in classify(Image.fromarray(picture), top_k=3):
        print(f"  {prediction['label']:>10}  {prediction['score']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
