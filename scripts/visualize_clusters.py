#!/usr/bin/env python
"""Draw a PaCa-ViT model's clusters for one image (see `paca_hf.visualization.render_clusters`).

    python scripts/visualize_clusters.py --model pacavit-tiny --image cat.jpg --output clusters.png --top-k 4

Rows: every stage with clusters (or only `--stage N`; `--stage head` for a segmentation head), then the PaCa
segmentation head's class clusters for a segmentation model. A model with a PaCa-ViT backbone (e.g. a converted
UperNet) shows its backbone's stages. Columns: image | hard cluster map | top-k heatmaps.
"""

import argparse
import os
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a converted model folder or a Hub id")
    parser.add_argument("--image", required=True, help="image file to look at")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--stage", default=None, help="only this stage (1-based), or 'head'; default: all")
    parser.add_argument(
        "--top-k",
        type=int,
        default=4,
        help="heatmaps of the K most used clusters (default 4; at most the number of clusters)",
    )
    parser.add_argument("--cell-size", type=int, default=None, help="longer side of each grid cell in pixels")
    parser.add_argument("--device", default="cpu", help="torch device to run the model on (default cpu)")
    return parser, parser.parse_args(argv)


def read_image(parser, path):
    """The image at `path` decoded by `paca_hf.images.open_image` (kept at full depth for the image processor), or
    a command-line error naming the problem."""
    if not os.path.exists(path):
        parser.error(f"--image {path}: no such file")
    if not os.path.isfile(path):
        parser.error(f"--image {path}: not a file")
    from paca_hf.images import open_image

    try:
        return open_image(path)
    except ValueError as error:
        parser.error(f"--image {path}: not an image ({error})")


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top-k must be >= 1, got {args.top_k}")
    stage = args.stage
    if stage is not None and stage.lower() != "head":
        try:
            stage = int(stage)
        except ValueError:
            parser.error(f"--stage must be a stage number (1-based) or 'head', got {stage!r}")
    if os.path.isdir(args.output):
        parser.error(f"--output {args.output} is a folder; pass the path of the PNG file to write")
    image = read_image(parser, args.image)

    from paca_hf.file_utils import atomic_file
    from paca_hf.visualization import load_model_and_processor, render_clusters

    try:
        model, image_processor = load_model_and_processor(args.model)
    except (OSError, ValueError) as error:
        print(f"error: cannot load model {args.model!r}: {error}", file=sys.stderr)
        return 1
    model.to(args.device)
    try:
        picture = render_clusters(
            model, image, stage=stage, top_k=args.top_k, image_processor=image_processor, cell_size=args.cell_size
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    with atomic_file(args.output, "wb") as handle:
        picture.save(handle, format="PNG")
    print(f"wrote {args.output} ({picture.width}x{picture.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
