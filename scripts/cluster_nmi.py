#!/usr/bin/env python
"""Do a PaCa-ViT model's clusters follow the objects? Per stage, the NMI between hard cluster maps and labels.

    python scripts/cluster_nmi.py --model pacavit-seg --dataset builtin --num-images 32 --compare-random \
        --output nmi.json

`--dataset builtin` (the default) uses the package's synthetic scenes (`paca_hf.data.scenes`): by default the
held-out `validation` stream, which no fine-tune on the built-in scenes trains on (`--split train` scores the
training scenes instead); a PATH is a folder that
`datasets.load_from_disk` or `datasets.load_dataset` reads, in the ADE20k schema (`image`, `annotation` with
0 = other). Labels are reduced as for ADE20k (0 -> ignored, others - 1) and downsampled (mode) to each stage's
resolution; the contingency tables are pooled over all images (`paca_hf.metrics.cluster_nmi`). With `--compare-random` the same architecture at
random initialisation (`from_config` after `torch.manual_seed(--seed)`) is scored too, as a baseline.
"""

import argparse
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a converted model folder or a Hub id")
    parser.add_argument("--dataset", default="builtin", help="'builtin' (synthetic scenes) or a dataset folder")
    parser.add_argument(
        "--split",
        default=None,
        help="split to score (default: validation; for a PATH without one, its first split); "
        "'builtin' has a held-out 'validation' and the fine-tune's 'train' scenes",
    )
    parser.add_argument("--num-images", type=int, default=16, help="images to use (default 16)")
    parser.add_argument("--image-size", type=int, default=128, help="side of the builtin scenes (default 128)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--compare-random", action="store_true", help="also score the randomly initialised model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default 0)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    parser.add_argument("--device", default="cpu")
    return parser, parser.parse_args(argv)


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    if args.num_images < 1:
        parser.error("--num-images must be >= 1")

    from paca_hf.file_utils import write_json_atomically
    from paca_hf.metrics.cluster_nmi import cluster_nmi_report, format_table, load_examples
    from paca_hf.visualization import load_model_and_processor

    try:
        examples, split = load_examples(args.dataset, args.split, args.num_images, args.image_size, return_split=True)
    except ValueError as error:
        parser.error(str(error))
    try:
        model, image_processor = load_model_and_processor(args.model)
    except (OSError, ValueError) as error:
        print(f"error: cannot load model {args.model!r}: {error}", file=sys.stderr)
        return 1
    model.to(args.device)
    try:
        report = cluster_nmi_report(
            model,
            image_processor,
            examples,
            num_images=args.num_images,
            batch_size=args.batch_size,
            compare_random=args.compare_random,
            seed=args.seed,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    print(f"scored {len(examples)} images of {args.dataset!r}, split {split!r}")
    print(format_table(report["nmi"], report.get("nmi_random_init"), report["num_clusters"]))
    if args.output:
        write_json_atomically(args.output, {"model": args.model, "dataset": args.dataset, "split": split, **report})
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
