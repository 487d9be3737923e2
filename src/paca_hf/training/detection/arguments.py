"""The command line of the COCO fine-tune (`scripts/finetune_coco.py`, `.finetune.main`): every flag, with the
authors' Mask R-CNN 1x recipe as defaults. Flags that mean what the ADE20k fine-tune's mean have its names
(`segmentation.arguments`); they are a public contract."""

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


def _int_list(value):
    try:
        parts = [int(part) for part in str(value).replace(" ", "").split(",") if part != ""]
    except ValueError:
        parts = None
    if not parts or min(parts) < 0:
        raise argparse.ArgumentTypeError(f"expected a comma list of whole numbers >= 0, e.g. 8,11, got {value!r}")
    return parts


def build_parser() -> argparse.ArgumentParser:
    """The COCO fine-tune's `ArgumentParser` (groups model, data, optimisation, run)."""
    parser = argparse.ArgumentParser(
        description="Fine-tune the PaCa-ViT Mask R-CNN on COCO-format data (the authors' 1x recipe) with accelerate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model_name_or_path",
        type=str,
        default=None,
        help="A converted detector folder (model_type pacavit_mask_rcnn: every tensor loads, the class "
        "layers are re-initialised when the classes differ) or a converted PaCa-ViT ImageNet "
        "classifier (model_type pacavit: its backbone loads, FPN, RPN and RoI heads are new).",
    )
    model.add_argument(
        "--config_name",
        type=str,
        default=None,
        help="Train from scratch: an official PaCa-ViT name (e.g. pacavit_tiny_p2cconv_100_0) for the "
        "backbone with mmdetection's Mask R-CNN heads, or a config.json (a detector's or a "
        "PaCa-ViT backbone's).",
    )
    model.add_argument(
        "--drop_path_rate",
        type=float,
        default=None,
        help="Override the backbone's drop-path rate (the authors' PaCa-Tiny detector: 0.1).",
    )
    model.add_argument("--cache_dir", type=str, default=None)

    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset_name",
        type=str,
        default=None,
        help=f"'{BUILTIN_SCENES}' trains on the built-in instance scenes (written as COCO folders "
        f"under OUTPUT_DIR/builtin-scenes-coco); otherwise pass the four COCO flags below.",
    )
    data.add_argument("--train_annotations", type=str, default=None, help="COCO instances JSON of the training set.")
    data.add_argument("--train_images", type=str, default=None, help="Folder of the training images (file_name).")
    data.add_argument("--validation_annotations", type=str, default=None, help="COCO instances JSON to evaluate on.")
    data.add_argument("--validation_images", type=str, default=None, help="Folder of the validation images.")
    data.add_argument(
        "--skip_invalid_annotations",
        action="store_true",
        help="Leave out annotations that fail the checks (a box without area, a zero-area polygon, "
        "...: COCO's train2017 has a few), counted and named in a warning, instead of stopping.",
    )
    data.add_argument(
        "--num_train_images",
        type=_positive_int,
        default=None,
        help="Use only the first N training images (by image id; default: all; 200 built-in scenes).",
    )
    data.add_argument(
        "--num_eval_images",
        type=_positive_int,
        default=None,
        help="Use only the first N validation images (default: all; 50 built-in scenes).",
    )
    data.add_argument("--builtin_image_size", type=int, default=128, help=f"Image size of '{BUILTIN_SCENES}'.")
    data.add_argument(
        "--resize_scale",
        type=_scale,
        default=(1333, 800),
        help="mmdetection's test Resize scale 'LONG,SHORT' (keep ratio), saved with the model's image processor.",
    )
    data.add_argument(
        "--train_short_edges",
        type=_int_list,
        default=list(range(480, 801, 32)),
        help="Multi-scale training (mmdetection RandomChoiceResize, keep ratio): the short edge is one "
        "of these, drawn at random per image, the long edge capped at LONG of --resize_scale.",
    )
    data.add_argument("--flip_prob", type=float, default=0.5, help="Random horizontal flip probability.")
    data.add_argument(
        "--detr_crop_prob",
        type=float,
        default=0.5,
        help="Probability of DETR's branch of the authors' RandomChoice: resize to a short edge of "
        "--detr_crop_short_edges, a random crop of --detr_crop_size, then the multi-scale resize.",
    )
    data.add_argument(
        "--detr_crop_short_edges",
        type=_int_list,
        default=[400, 500, 600],
        help="Short edges of DETR's branch's first resize (long edge capped as above).",
    )
    data.add_argument(
        "--detr_crop_size",
        type=_scale,
        default=(384, 600),
        help="'MIN,MAX': the crop's height and width are each drawn in this range (mmdetection "
        "RandomCrop absolute_range), at most the image's.",
    )
    data.add_argument("--num_workers", type=int, default=0, help="DataLoader workers (they decode images and masks).")

    optim = parser.add_argument_group("optimisation")
    add_adamw_arguments(optim, learning_rate=1e-4, weight_decay=0.05)
    optim.add_argument(
        "--norm_decay_mult",
        type=float,
        default=0.0,
        help="weight-decay multiplier of norm layers (the authors' paramwise_cfg: 'norm' decay 0).",
    )
    optim.add_argument("--num_train_epochs", type=int, default=12, help="Epochs (1x); sets the number of steps.")
    optim.add_argument(
        "--max_train_steps",
        type=int,
        default=None,
        help="Optimiser steps; overrides --num_train_epochs (the learning-rate steps then fall at the "
        "same fractions of the run, lr_decay_epochs / num_train_epochs).",
    )
    optim.add_argument(
        "--lr_decay_epochs",
        type=_int_list,
        default=[8, 11],
        help="Epochs at whose start the learning rate is multiplied by --lr_decay_factor.",
    )
    optim.add_argument("--lr_decay_factor", type=float, default=0.1)
    optim.add_argument("--num_warmup_steps", type=int, default=500)
    optim.add_argument("--warmup_start_factor", type=float, default=0.001)
    add_step_arguments(optim)

    add_run_arguments(parser, schedule_end="the last step")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """The flags of `argv` (default `sys.argv[1:]`) after the checks argparse cannot make (exactly one model source;
    either `--dataset_name builtin-scenes` or all four COCO flags; positive batch sizes and epochs; non-negative
    learning rates and decays; Adam betas in [0, 1); a flip probability in [0, 1]; an `--output_dir` that is a folder
    or does not exist yet); otherwise argparse's usage error (`SystemExit` 2) naming the flag."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_shared_args(
        parser,
        args,
        non_negative=(
            "learning_rate",
            "weight_decay",
            "adam_epsilon",
            "norm_decay_mult",
            "warmup_start_factor",
            "lr_decay_factor",
        ),
    )
    for flag in ("flip_prob", "detr_crop_prob"):
        if not 0 <= getattr(args, flag) <= 1:
            parser.error(f"--{flag} must be in [0, 1], got {getattr(args, flag)}")
    if not 1 <= args.detr_crop_size[0] <= args.detr_crop_size[1] or min(args.detr_crop_short_edges) < 1:
        parser.error(
            f"--detr_crop_size must be 'MIN,MAX' with 1 <= MIN <= MAX, got {args.detr_crop_size}, and "
            f"--detr_crop_short_edges whole numbers >= 1, got {args.detr_crop_short_edges}"
        )
    if args.num_warmup_steps < 0 or args.num_workers < 0:
        parser.error("--num_warmup_steps and --num_workers must be >= 0.")
    if min(args.train_short_edges) < 1:
        parser.error(f"--train_short_edges must be whole numbers >= 1, got {args.train_short_edges}")
    if args.num_train_epochs < 1:
        parser.error(f"--num_train_epochs must be >= 1, got {args.num_train_epochs}")
    if args.max_train_steps is not None and args.max_train_steps < 0:
        parser.error("--max_train_steps must be >= 0.")
    coco_flags = ("train_annotations", "train_images", "validation_annotations", "validation_images")
    given = [flag for flag in coco_flags if getattr(args, flag) is not None]
    if args.dataset_name is not None:
        if args.dataset_name != BUILTIN_SCENES:
            parser.error(
                f"--dataset_name takes only '{BUILTIN_SCENES}'; pass COCO folders with "
                f"{', '.join('--' + flag for flag in coco_flags)}."
            )
        if given:
            parser.error(
                f"--dataset_name {BUILTIN_SCENES} and {', '.join('--' + flag for flag in given)} exclude each other."
            )
    elif len(given) != len(coco_flags):
        missing = [flag for flag in coco_flags if flag not in given]
        parser.error(
            f"missing {', '.join('--' + flag for flag in missing)} (or pass --dataset_name {BUILTIN_SCENES})."
        )
    return args
