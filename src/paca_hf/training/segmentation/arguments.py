"""The command line of the ADE20k fine-tune (`scripts/finetune_ade20k.py`, `.finetune.main`): every
flag, with the authors' recipe as defaults. The names follow transformers' `run_semantic_segmentation_no_trainer.py`;
they are a public contract."""

import argparse

from ..arguments import (
    BUILTIN_SCENES,
    _positive_int,
    _scale,
    add_adamw_arguments,
    add_run_arguments,
    add_step_arguments,
    check_shared_args,
)


def _num_clusters(value):
    if str(value).lower() == "keep":
        return value
    parts = [part for part in str(value).replace(" ", "").split(",") if part != ""]
    if not parts or not all(part.isdigit() for part in parts):
        raise argparse.ArgumentTypeError(
            f"expected one number of clusters, a comma list of numbers >= 0 (one per stage) or 'keep', got {value!r}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    """The fine-tune's `ArgumentParser` (groups model, data, optimisation, run)."""
    parser = argparse.ArgumentParser(
        description="Fine-tune PaCa-ViT + PaCa head for semantic segmentation (ADE20k recipe) with accelerate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model_name_or_path",
        type=str,
        default=None,
        help="A converted PaCa-ViT checkpoint folder or Hub id (e.g. an ImageNet classifier); the "
        "segmentation head is new, tensors whose shape changes are re-initialised (and logged).",
    )
    model.add_argument(
        "--config_name",
        type=str,
        default=None,
        help="Train from scratch: an official name (e.g. pacavit_tiny_p2cconv_100_0) or a config.json.",
    )
    model.add_argument(
        "--num_clusters",
        type=_num_clusters,
        default="200",
        help="Clusters per stage downstream: one number for every stage that has clusters (the "
        "authors use 200 on ADE20k, stages without clusters keep 0), a comma list, or 'keep'.",
    )
    model.add_argument("--drop_path_rate", type=float, default=None, help="Override the config's drop-path rate.")
    model.add_argument("--cache_dir", type=str, default=None)
    model.add_argument("--trust_remote_code", action="store_true", help="Passed to datasets.load_dataset.")

    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset_name",
        type=str,
        default="scene_parse_150",
        help=f"Hub id, a local folder that datasets.load_dataset / load_from_disk reads (with `image` "
        f"and `annotation` columns), or '{BUILTIN_SCENES}' (synthetic scenes made in memory).",
    )
    data.add_argument("--dataset_config_name", type=str, default=None)
    data.add_argument(
        "--train_val_split",
        type=float,
        default=0.15,
        help="Share of train held out when the dataset has no validation split.",
    )
    data.add_argument(
        "--reduce_labels",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ADE20k labels: 0 ('other') is ignored (255) and 1..150 become 0..149.",
    )
    data.add_argument(
        "--id2label_file",
        type=str,
        default=None,
        help="JSON {id: name} indexed like the trained labels (after reduction).",
    )
    data.add_argument(
        "--num_train_images",
        type=_positive_int,
        default=None,
        help="Use only the first N training images (default: all; 200 built-in scenes).",
    )
    data.add_argument(
        "--num_eval_images",
        type=_positive_int,
        default=None,
        help="Use only the first N validation images (default: all; 50 built-in scenes).",
    )
    data.add_argument("--builtin_image_size", type=int, default=128, help=f"Image size of '{BUILTIN_SCENES}'.")
    data.add_argument("--crop_size", type=int, default=512, help="Training crop (square).")
    data.add_argument(
        "--resize_scale",
        type=_scale,
        default=None,
        help="mmseg RandomResize / test Resize scale 'LONG,SHORT'; default (4 x crop, crop), i.e. "
        "2048,512 for 512 crops.",
    )
    data.add_argument("--num_workers", type=int, default=0, help="DataLoader workers (they only decode images).")

    optim = parser.add_argument_group("optimisation")
    add_adamw_arguments(optim, learning_rate=6e-5, weight_decay=0.01)
    optim.add_argument("--head_lr_mult", type=float, default=10.0, help="lr multiplier of the decode head.")
    optim.add_argument(
        "--clustering_lr_mult",
        type=float,
        default=10.0,
        help="lr multiplier of the backbone's clustering output layers (to_clusters).",
    )
    optim.add_argument("--norm_decay_mult", type=float, default=0.0, help="weight-decay multiplier of norm layers.")
    optim.add_argument("--max_train_steps", type=int, default=160000, help="Optimiser steps (poly ends here).")
    optim.add_argument("--num_warmup_steps", type=int, default=1500)
    optim.add_argument("--warmup_start_factor", type=float, default=1e-6)
    optim.add_argument("--poly_power", type=float, default=1.0)
    add_step_arguments(optim)
    optim.add_argument(
        "--avg_non_ignore",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Loss normalisation, mmseg's CrossEntropyLoss(avg_non_ignore): average each "
        "cross-entropy over the non-ignored pixels (the authors' PaCa-head configs); "
        "--no-avg_non_ignore divides the same sum by all pixels, ignored ones included (mmseg's "
        "default, the authors' UperNet configs).",
    )

    run = add_run_arguments(parser, schedule_end="--max_train_steps")
    run.add_argument(
        "--save_predictions",
        action="store_true",
        help="Write the final evaluation's prediction / reference maps to eval_predictions.npz.",
    )
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """The flags of `argv` (default `sys.argv[1:]`) after the checks argparse cannot make (exactly one model source,
    positive batch sizes, non-negative learning rates and decays, Adam betas in [0, 1), an `--output_dir` that is a
    folder or does not exist yet); otherwise argparse's usage error (`SystemExit` 2) naming the flag.
    `--resize_scale` defaults to (4 x crop, crop)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_shared_args(
        parser,
        args,
        non_negative=(
            "learning_rate",
            "weight_decay",
            "adam_epsilon",
            "head_lr_mult",
            "clustering_lr_mult",
            "norm_decay_mult",
            "warmup_start_factor",
        ),
    )
    if args.num_warmup_steps < 0:
        parser.error(f"--num_warmup_steps must be >= 0, got {args.num_warmup_steps}")
    if args.num_workers < 0:
        parser.error(f"--num_workers must be >= 0, got {args.num_workers}")
    if args.max_train_steps < 0:
        parser.error("--max_train_steps must be >= 0.")
    if args.resize_scale is None:
        args.resize_scale = (4 * args.crop_size, args.crop_size)
    return args
