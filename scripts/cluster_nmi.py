#!/usr/bin/env python
"""Do a PaCa-ViT model's clusters follow the objects? Per stage, the NMI between hard cluster maps and labels.

    python scripts/cluster_nmi.py --model pacavit-seg --dataset builtin --num-images 32 --compare-random \
        --output nmi.json

`--dataset builtin` uses the package's synthetic scenes (`paca_hf.data.scenes`); a PATH is a folder that
`datasets.load_from_disk` or `datasets.load_dataset` reads, in the ADE20k schema (`image`, `annotation` with
0 = other). Labels are reduced as for ADE20k (0 -> ignored, others - 1) and downsampled (mode) to each stage's
resolution; the contingency tables are pooled over all images. With `--compare-random` the same architecture at
random initialisation (`from_config` after `torch.manual_seed(--seed)`) is scored too, as a baseline.
"""

import argparse
import json
import os
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a converted model folder or a Hub id")
    parser.add_argument("--dataset", default="builtin", help="'builtin' (synthetic scenes) or a dataset folder")
    parser.add_argument("--split", default=None, help="split of a PATH dataset (default: validation, else the first)")
    parser.add_argument("--num-images", type=int, default=16, help="images to use (default 16)")
    parser.add_argument("--image-size", type=int, default=128, help="side of the builtin scenes (default 128)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--compare-random", action="store_true", help="also score the randomly initialised model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default 0)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    parser.add_argument("--device", default="cpu")
    return parser, parser.parse_args(argv)


def load_data(parser, args):
    if args.dataset == "builtin":
        try:
            from paca_hf.data.scenes import make_scenes
        except ImportError:
            parser.error("--dataset builtin needs paca_hf.data.scenes, which is not available")
        return make_scenes(args.num_images, image_size=(args.image_size, args.image_size), seed=0)
    if not os.path.exists(args.dataset):
        parser.error(f"--dataset {args.dataset}: no such folder (use 'builtin' or a dataset folder)")
    import datasets

    try:
        data = datasets.load_from_disk(args.dataset)
    except (FileNotFoundError, ValueError):
        data = datasets.load_dataset(args.dataset)
    if isinstance(data, datasets.DatasetDict):
        split = args.split or ("validation" if "validation" in data else next(iter(data)))
        if split not in data:
            parser.error(f"--split {split}: the dataset has {sorted(data)}")
        data = data[split]
    missing = {"image", "annotation"} - set(data.column_names)
    if missing:
        parser.error(f"--dataset {args.dataset}: columns {sorted(missing)} missing (ADE20k schema: image, annotation)")
    return data.select(range(min(args.num_images, len(data))))


def format_table(scores, random_scores=None, cluster_counts=None) -> str:
    header = ["stage", "clusters", "NMI (trained)"] + (["NMI (random init)"] if random_scores is not None else [])
    lines = [header]
    for key, value in scores.items():
        line = [key, str((cluster_counts or {}).get(key, "")), f"{value:.4f}"]
        if random_scores is not None:
            line.append(f"{random_scores[key]:.4f}" if key in random_scores else "-")
        lines.append(line)
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    if args.num_images < 1:
        parser.error("--num-images must be >= 1")

    import torch

    from paca_hf.visualization import (
        auto_model_class,
        load_model_and_processor,
        stage_cluster_nmi,
    )

    data = load_data(parser, args)
    try:
        model, image_processor = load_model_and_processor(args.model)
    except (OSError, ValueError) as error:
        print(f"error: cannot load model {args.model!r}: {error}", file=sys.stderr)
        return 1
    model.to(args.device)

    def score(scored_model):
        return stage_cluster_nmi(
            scored_model,
            data,
            image_processor,
            num_images=args.num_images,
            batch_size=args.batch_size,
            return_tables=True,
        )

    try:
        scores, tables = score(model)
        random_scores = None
        if args.compare_random:
            torch.manual_seed(args.seed)
            random_model = auto_model_class(model.config.architectures).from_config(model.config)
            random_model.to(args.device).eval()
            random_scores, _ = score(random_model)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    cluster_counts = {key: int(table.shape[0]) for key, table in tables.items()}
    print(format_table(scores, random_scores, cluster_counts))
    if args.output:
        result = {
            "model": args.model,
            "dataset": args.dataset,
            "num_images": min(args.num_images, len(data)),
            "num_clusters": cluster_counts,
            "nmi": scores,
        }
        if random_scores is not None:
            result["nmi_random_init"] = random_scores
            result["random_init_seed"] = args.seed
        directory = os.path.dirname(os.path.abspath(args.output))
        os.makedirs(directory, exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as file:
            json.dump(result, file, indent=2)
            file.write("\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
