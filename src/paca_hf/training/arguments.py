"""Command-line pieces both fine-tunes share (`segmentation.arguments`, `detection.arguments`): argparse types of
the flags they have in common, and the `--dataset_name` value of the built-in scenes."""

import argparse


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
