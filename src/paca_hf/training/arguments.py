"""Command-line pieces both fine-tunes share (`segmentation.arguments`, `detection.arguments`): argparse types of
the flags they have in common, the `--dataset_name` value of the built-in scenes, the flags both have (batch sizes
and AdamW, accumulation / clipping / seed, the "run" group) and their checks."""

import argparse
from pathlib import Path


BUILTIN_SCENES = "builtin-scenes"


def _scale(value):
    parts = [int(part) for part in str(value).split(",")]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError("expected two integers 'LONG,SHORT', e.g. 2048,512")
    return tuple(parts)


def _positive_int(value):
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {number}")
    return number


def _checkpointing_steps(value):
    if value is None or value == "epoch":
        return value
    if str(value).isdigit() and int(value) > 0:
        return int(value)
    raise argparse.ArgumentTypeError("expected a positive number of steps or 'epoch'")


def add_adamw_arguments(group, *, learning_rate: float, weight_decay: float):
    """Add the batch-size and AdamW flags both fine-tunes have (`--per_device_train_batch_size` ...
    `--weight_decay`) to `group` (a parser or an argument group), with the task's recipe `learning_rate` and
    `weight_decay` as defaults. `check_shared_args` validates them."""
    group.add_argument("--per_device_train_batch_size", type=int, default=2)
    group.add_argument("--per_device_eval_batch_size", type=int, default=1)
    group.add_argument("--learning_rate", type=float, default=learning_rate)
    group.add_argument("--adam_beta1", type=float, default=0.9)
    group.add_argument("--adam_beta2", type=float, default=0.999)
    group.add_argument("--adam_epsilon", type=float, default=1e-8)
    group.add_argument("--weight_decay", type=float, default=weight_decay)


def add_step_arguments(group):
    """Add `--gradient_accumulation_steps`, `--max_grad_norm` and `--seed` (the same in both fine-tunes) to `group`."""
    group.add_argument("--gradient_accumulation_steps", type=int, default=1)
    group.add_argument("--max_grad_norm", type=float, default=None, help="Clip gradients (the recipe does not).")
    group.add_argument("--seed", type=int, default=0)


def add_run_arguments(parser: argparse.ArgumentParser, *, schedule_end: str):
    """Add the "run" group both fine-tunes share (output folder, precision, checkpoints and resuming, evaluation and
    logging cadence, trackers, Hub, debugging) to `parser` and return it, so that a task can add its own run flags.
    `schedule_end` names where the task's learning-rate schedule ends (in `--stop_after_step`'s help)."""
    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", type=str, required=True)
    run.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=["no", "fp16", "bf16"],
        help="Through accelerate; default: accelerate's configuration (no).",
    )
    run.add_argument("--cpu", action="store_true", help="Run on the CPU even if a GPU is there.")
    run.add_argument(
        "--checkpointing_steps",
        type=_checkpointing_steps,
        default=None,
        help="Save the training state every N steps, or 'epoch'.",
    )
    run.add_argument(
        "--checkpoints_total_limit",
        type=int,
        default=1,
        help="Complete checkpoints kept (the previous ones are removed only after a new one is "
        "complete); 0 keeps all.",
    )
    run.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help="A checkpoint folder, or 'latest' (the newest complete one in --output_dir).",
    )
    run.add_argument(
        "--stop_after_step",
        type=int,
        default=None,
        help=f"Stop after this step as if interrupted (the schedule still ends at {schedule_end}); for "
        "time-limited jobs and tests. No final model is written.",
    )
    run.add_argument("--eval_steps", type=int, default=None, help="Also evaluate every N steps (always at the end).")
    run.add_argument("--logging_steps", type=int, default=50)
    run.add_argument("--with_tracking", action="store_true", help="Log to the trackers of --report_to.")
    run.add_argument(
        "--report_to", type=str, default="all", help="accelerate trackers: tensorboard, wandb, comet_ml, ... or 'all'."
    )
    run.add_argument("--push_to_hub", action="store_true")
    run.add_argument("--hub_model_id", type=str, default=None)
    run.add_argument("--hub_token", type=str, default=None)
    run.add_argument(
        "--debug_dump_weights",
        action="store_true",
        help="Write every process's weight checksums to rank_checksums/rank_N.json.",
    )
    run.add_argument("--find_unused_parameters", action="store_true", help="DistributedDataParallel option.")
    run.add_argument("--disable_tqdm", action="store_true")
    return run


def check_shared_args(parser: argparse.ArgumentParser, args: argparse.Namespace, non_negative) -> None:
    """The checks argparse cannot make of the flags both fine-tunes share: the flags named in `non_negative` are >= 0
    (NaN fails), Adam betas in [0, 1), `--max_grad_norm` > 0, an `--output_dir` that is a folder or does not exist
    yet, exactly one of `--model_name_or_path` and `--config_name`, `--gradient_accumulation_steps` and
    `--per_device_train_batch_size` >= 1. A failed check is argparse's usage error (`SystemExit` 2) naming the flag.
    `--hub_model_id` defaults to the name of `--output_dir` with `--push_to_hub`."""
    for flag in non_negative:
        if not getattr(args, flag) >= 0:  # NaN fails too
            parser.error(f"--{flag} must be >= 0, got {getattr(args, flag)}")
    for flag in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(args, flag) < 1:
            parser.error(f"--{flag} must be in [0, 1), got {getattr(args, flag)}")
    if args.max_grad_norm is not None and not args.max_grad_norm > 0:
        parser.error(f"--max_grad_norm must be > 0, got {args.max_grad_norm}")
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        parser.error(f"--output_dir {args.output_dir} exists and is not a folder")
    if (args.model_name_or_path is None) == (args.config_name is None):
        parser.error("pass exactly one of --model_name_or_path (fine-tune) and --config_name (scratch).")
    if args.gradient_accumulation_steps < 1 or args.per_device_train_batch_size < 1:
        parser.error("--gradient_accumulation_steps and --per_device_train_batch_size must be >= 1.")
    if args.push_to_hub and args.hub_model_id is None:
        args.hub_model_id = Path(args.output_dir).name
