#!/usr/bin/env python
"""Top-1 / top-5 accuracy of a PaCa-ViT classifier on a validation image folder.

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

import argparse
import os
import sys

from paca_hf.file_utils import write_json_atomically
from paca_hf.training.imagenet_evaluation import evaluate_image_folder


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
        write_json_atomically(args.output, results, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
