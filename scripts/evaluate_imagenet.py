#!/usr/bin/env python
"""Top-1 / top-5 accuracy of a PaCa-ViT classifier on a validation image folder.

    python scripts/evaluate_imagenet.py --model pacavit-small --validation_dir imagenet/val --output val.json

`--model` is a folder or a Hub id holding the model and, normally, its image processor: the images get the model's
own evaluation transform (for the authors' models: shorter side to floor(224 / 0.9) = 248, bicubic, centre crop 224,
ImageNet mean / std). Without a saved image processor the authors' transform (`PaCaViTImageProcessor()`) is used.

The folder has `datasets`' imagefolder layout: one sub-folder per class, whose name is the label; `datasets`
numbers the classes in sorted folder-name order. How those are matched to the model's output indices
(`--label_mapping`):

    names   through the model's `config.label2id`: every folder name must be a label name of the model. Models
            trained with scripts/train_imagenet.py on an image folder store the folder names, so a validation
            folder holding only some of the classes is still scored correctly.
    sorted  folder i (in sorted order) is class i; the number of folders must equal the model's number of labels.
            This is the convention for ImageNet-1k laid out by WordNet synset (n01440764/, n01443537/, ...): the
            sorted synsets are the standard class order of the authors' (and timm's) checkpoints, whose label names
            are the readable ones ("tench, Tinca tinca").
    auto    (default) `names` when every folder name is one of the model's label names, else `sorted` (the
            mapping chosen is printed and written to the JSON).

Prints the accuracies (in percent) and, with `--output`, writes them to a JSON file as fractions (`top1`, `top5`,
the form of the `accuracy_topk` metric) and as percentages (`top1_percent`, `top5_percent`).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from datasets import ClassLabel, load_dataset
from transformers import AutoImageProcessor, AutoModelForImageClassification

import paca_hf  # noqa: F401  (registers PaCa-ViT with the Auto classes)
from paca_hf import PaCaViTImageProcessor
from paca_hf.metrics.accuracy_topk.accuracy_topk import true_class_rank


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or Hub id (with its image processor)")
    parser.add_argument("--validation_dir", required=True, help="image folder: one sub-folder per class")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--output", default=None, help="write the results to this JSON file")
    parser.add_argument("--label_mapping", choices=("auto", "names", "sorted"), default="auto")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--max_samples", type=int, default=None, help="score only the first N images")
    parser.add_argument("--cache_dir", default=None, help="cache for `datasets` and Hub downloads")
    return parser.parse_args(argv)


def label_map(folder_names: list[str], config, mode: str) -> tuple[str, np.ndarray]:
    """(mapping used, model class index of every folder index)."""
    label2id = {str(name): int(index) for name, index in (config.label2id or {}).items()}
    names_fit = all(name in label2id for name in folder_names)
    if mode == "names" or (mode == "auto" and names_fit):
        if not names_fit:
            missing = [name for name in folder_names if name not in label2id][:5]
            raise ValueError(f"folder names {missing} are not label names of the model (config.label2id)")
        return "names", np.array([label2id[name] for name in folder_names], dtype=np.int64)
    if len(folder_names) != config.num_labels:
        why = "" if names_fit else "; the folder names are not label names of the model either"
        raise ValueError(
            f"the folder has {len(folder_names)} classes and the model {config.num_labels}, so folder i cannot be "
            f"mapped to class i{why} (see --label_mapping)"
        )
    return "sorted", np.arange(len(folder_names), dtype=np.int64)


def load_image_processor(model: str, cache_dir=None):
    try:
        return AutoImageProcessor.from_pretrained(model, cache_dir=cache_dir)
    except (OSError, ValueError):
        print(f"no image processor in {model}; using the authors' evaluation transform", file=sys.stderr)
        return PaCaViTImageProcessor()


class EvalTransform:
    """`datasets` transform: the image processor on every image (a class, so that workers can pickle it)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, batch):
        images = [image.convert("RGB") for image in batch["image"]]
        return {"pixel_values": self.processor(images, return_tensors="pt")["pixel_values"], "label": batch["label"]}


def collate(examples):
    pixel_values = torch.stack([example["pixel_values"] for example in examples])
    return pixel_values, torch.tensor([example["label"] for example in examples], dtype=torch.long)


def evaluate(args) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = AutoModelForImageClassification.from_pretrained(args.model, cache_dir=args.cache_dir).to(device).eval()
    processor = load_image_processor(args.model, args.cache_dir)

    data_files = {"validation": os.path.join(args.validation_dir, "**")}
    dataset = load_dataset("imagefolder", data_files=data_files, split="validation", cache_dir=args.cache_dir)
    feature = dataset.features.get("label")
    if not isinstance(feature, ClassLabel):
        raise ValueError(f"{args.validation_dir} has no class sub-folders (imagefolder layout expected)")
    mapping, to_model = label_map(list(feature.names), model.config, args.label_mapping)
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))

    dataset.set_transform(EvalTransform(processor))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
    )

    ranks = []
    start = time.perf_counter()
    with torch.inference_mode():
        for pixel_values, labels in loader:
            logits = model(pixel_values=pixel_values.to(device)).logits.float().cpu().numpy()
            ranks.append(true_class_rank(logits, to_model[labels.numpy()]))
    ranks = np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)
    if ranks.size == 0:
        raise ValueError(f"no images found in {args.validation_dir}")
    top1, top5 = float(np.mean(ranks < 1)), float(np.mean(ranks < 5))
    return {
        "model": args.model,
        "validation_dir": os.path.abspath(args.validation_dir),
        "num_samples": int(ranks.size),
        "num_classes": len(feature.names),
        "label_mapping": mapping,
        "top1": top1,
        "top5": top5,
        "top1_percent": 100.0 * top1,
        "top5_percent": 100.0 * top5,
        "seconds": round(time.perf_counter() - start, 3),
        "device": str(device),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    results = evaluate(args)
    print(
        f"{results['model']}: top-1 {results['top1_percent']:.2f}%  top-5 {results['top5_percent']:.2f}%  "
        f"({results['num_samples']} images, {results['num_classes']} classes, label mapping: "
        f"{results['label_mapping']})"
    )
    if args.output:
        directory = os.path.dirname(os.path.abspath(args.output))
        os.makedirs(directory, exist_ok=True)
        with open(args.output, "w") as handle:
            json.dump(results, handle, indent=2)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
