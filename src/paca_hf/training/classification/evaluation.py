"""Top-1 / top-5 accuracy of a classifier on an image folder (scripts/evaluate_imagenet.py), and the evaluation
transform and collate the ImageNet recipe (`.train`) shares. Importing this module needs no timm."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from ...metrics.accuracy_topk.accuracy_topk import true_class_rank


class EvalTransform:
    """`datasets` transform: `{image, label}` columns -> `{pixel_values, labels}` through the image processor (the
    authors' evaluation transform), which decodes with `paca_hf.images` (16-bit data kept). A class, so that
    DataLoader workers can pickle it under any start method."""

    def __init__(self, image_processor, image_column: str = "image", label_column: str = "label"):
        self.image_processor = image_processor
        self.image_column = image_column
        self.label_column = label_column

    def __call__(self, batch):
        images = [_decode_file(image) for image in batch[self.image_column]]
        return {
            "pixel_values": list(self.image_processor(images, return_tensors="pt")["pixel_values"]),
            "labels": batch[self.label_column],
        }


def _decode_file(image):
    """A `datasets.Image(decode=False)` value `{"path", "bytes"}` opened by `paca_hf.images.open_image` (a
    `ValueError` naming the file when it is not an image); anything else is returned as it is."""
    if not isinstance(image, dict):
        return image
    from ...images import open_image

    path = image.get("path")
    try:
        return open_image(image["bytes"] if image.get("bytes") is not None else path)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def collate_fn(examples):
    """Examples `{pixel_values (3, H, W), labels}` -> a batch `{pixel_values (N, 3, H, W), labels (N,) int64}`."""
    return {
        "pixel_values": torch.stack([torch.as_tensor(example["pixel_values"]) for example in examples]),
        "labels": torch.tensor([int(example["labels"]) for example in examples], dtype=torch.long),
    }


def folder_label_map(folder_names: list[str], config, mode: str) -> tuple[str, np.ndarray]:
    """`(mapping used, model class index of every folder index)` for `--label_mapping` `names`, `sorted` or
    `auto` (see scripts/evaluate_imagenet.py). Raises `ValueError` when the folders cannot be mapped."""
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


def evaluate_image_folder(
    model_name_or_path: str,
    validation_dir: str,
    batch_size: int = 64,
    num_workers: int = 0,
    label_mapping: str = "auto",
    device: str | None = None,
    max_samples: int | None = None,
    cache_dir: str | None = None,
) -> dict:
    """Top-1 / top-5 accuracy (fractions and percentages) of a classifier on an imagefolder-layout folder, with the
    model's own image processor (the authors' transform when none is saved). A sample whose scores are not all
    finite counts as wrong (see `accuracy_topk`). One class sub-folder is one class. Raises `ValueError` for a
    missing folder, one without class sub-folders or images, a file that is not an image (named), or unmappable
    classes."""
    import time

    from datasets import ClassLabel, Image, load_dataset
    from transformers import AutoModelForImageClassification

    from ...loading import load_image_processor

    if not os.path.isdir(validation_dir):
        what = "is not a folder" if os.path.exists(validation_dir) else "does not exist"
        raise ValueError(f"the validation folder {validation_dir} {what}")
    if not any(entry.is_dir() and not entry.name.startswith(".") for entry in os.scandir(validation_dir)):
        raise ValueError(f"{validation_dir} has no class sub-folders (imagefolder layout expected)")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = AutoModelForImageClassification.from_pretrained(model_name_or_path, cache_dir=cache_dir)
    model = model.to(device).eval()
    processor = load_image_processor(model_name_or_path, cache_dir=cache_dir)

    data_files = {"validation": os.path.join(validation_dir, "**")}
    try:
        # drop_labels=False: datasets would drop the labels of a folder with a single class sub-folder.
        dataset = load_dataset(
            "imagefolder", data_files=data_files, split="validation", cache_dir=cache_dir, drop_labels=False
        )
    except (FileNotFoundError, ValueError) as error:  # datasets: "... corresponds to no data"
        raise ValueError(f"no images found in {validation_dir} ({error})") from error
    feature = dataset.features.get("label")
    if not isinstance(feature, ClassLabel):
        raise ValueError(f"{validation_dir} has no class sub-folders (imagefolder layout expected)")
    dataset = dataset.cast_column("image", Image(decode=False))  # decoded by EvalTransform, which names bad files
    mapping, to_model = folder_label_map(list(feature.names), model.config, label_mapping)
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    dataset.set_transform(EvalTransform(processor))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=device.type == "cuda",
    )

    ranks = []
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in loader:
            logits = model(pixel_values=batch["pixel_values"].to(device)).logits.float().cpu().numpy()
            ranks.append(true_class_rank(logits, to_model[batch["labels"].numpy()]))
    ranks = np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)
    if ranks.size == 0:
        raise ValueError(f"no images found in {validation_dir}")
    top1, top5 = float(np.mean(ranks < 1)), float(np.mean(ranks < 5))
    return {
        "model": model_name_or_path,
        "validation_dir": os.path.abspath(validation_dir),
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


# The command line of scripts/evaluate_imagenet.py (kept here so that it is called and tested as a function).
CLI_DESCRIPTION = """Top-1 / top-5 accuracy of a PaCa-ViT classifier on a validation image folder.

    python scripts/evaluate_imagenet.py --model pacavit-small --validation_dir imagenet/val --output val.json

`--model` is a folder or a Hub id holding the model and, normally, its image processor: the images get the model's
own evaluation transform (for the authors' models: shorter side to floor(224 / 0.9) = 248, bicubic, centre crop 224,
ImageNet mean / std). Without a saved image processor the authors' transform (`PaCaViTImageProcessor()`) is used. A sample whose
scores are not all finite (NaN, inf) counts as wrong.

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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=CLI_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or Hub id (with its image processor)")
    parser.add_argument("--validation_dir", required=True, help="image folder: one sub-folder per class")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--output", default=None, help="write the results to this JSON file")
    parser.add_argument("--label_mapping", choices=("auto", "names", "sorted"), default="auto")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--max_samples", type=int, default=None, help="score only the first N images")
    parser.add_argument("--cache_dir", default=None, help="cache for `datasets` and Hub downloads")
    args = parser.parse_args(argv)
    if args.output is not None and os.path.isdir(args.output):
        parser.error(f"--output {args.output} is a folder; pass the path of the JSON file to write")
    return args


def main(argv=None) -> int:
    """Evaluate, print and write the results; exit status 2 with one `error:` line for bad input."""
    args = parse_args(argv)
    try:
        results = evaluate_image_folder(
            args.model,
            args.validation_dir,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            label_mapping=args.label_mapping,
            device=args.device,
            max_samples=args.max_samples,
            cache_dir=args.cache_dir,
        )
    except ValueError as error:
        message = str(error).strip()
        if "Original Traceback" in message:  # raised in a DataLoader worker: its own last line is the message
            message = message.splitlines()[-1].removeprefix("ValueError: ")
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(
        f"{results['model']}: top-1 {results['top1_percent']:.2f}%  top-5 {results['top5_percent']:.2f}%  "
        f"({results['num_samples']} images, {results['num_classes']} classes, label mapping: "
        f"{results['label_mapping']})"
    )
    if args.output:
        from ...file_utils import write_json_atomically

        write_json_atomically(args.output, results, indent=2)
    return 0
