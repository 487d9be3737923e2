"""The command-line pieces both fine-tunes share (`paca_hf.training.arguments`): one home for the batch-size / AdamW
flags, accumulation / clipping / seed, the "run" group and their checks."""

import argparse
import re

import pytest

from paca_hf.training import arguments as A
from paca_hf.training.detection.arguments import build_parser as coco_parser
from paca_hf.training.segmentation.arguments import build_parser as ade20k_parser


def _shared_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_name_or_path", default=None)
    parser.add_argument("--config_name", default=None)
    A.add_adamw_arguments(parser, learning_rate=0.5, weight_decay=0.25)
    A.add_step_arguments(parser)
    A.add_run_arguments(parser, schedule_end="step 7")
    return parser


def _parse(argv):
    parser = _shared_parser()
    args = parser.parse_args(argv)
    A.check_shared_args(parser, args, non_negative=("learning_rate", "weight_decay"))
    return args


def test_shared_flags_take_the_task_defaults_and_parse(tmp_path):
    args = _parse(["--config_name", "x", "--output_dir", str(tmp_path / "run"), "--checkpointing_steps", "epoch"])
    assert (args.learning_rate, args.weight_decay, args.per_device_train_batch_size) == (0.5, 0.25, 2)
    assert (args.gradient_accumulation_steps, args.max_grad_norm, args.seed) == (1, None, 0)
    assert (args.checkpointing_steps, args.checkpoints_total_limit, args.logging_steps) == ("epoch", 1, 50)
    assert args.hub_model_id is None
    args = _parse(["--config_name", "x", "--output_dir", str(tmp_path / "run"), "--push_to_hub"])
    assert args.hub_model_id == "run"
    stop_help = next(action.help for action in _shared_parser()._actions if action.dest == "stop_after_step")
    assert "the schedule still ends at step 7" in stop_help


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--config_name", "x", "--learning_rate", "nan"], "--learning_rate must be >= 0"),
        (["--config_name", "x", "--weight_decay", "-1"], "--weight_decay must be >= 0"),
        (["--config_name", "x", "--adam_beta1", "1"], r"--adam_beta1 must be in \[0, 1\)"),
        (["--config_name", "x", "--max_grad_norm", "0"], "--max_grad_norm must be > 0"),
        (["--config_name", "x", "--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps"),
        (["--config_name", "x", "--checkpointing_steps", "0"], "--checkpointing_steps"),
        ([], "exactly one of --model_name_or_path"),
        (["--config_name", "x", "--model_name_or_path", "y"], "exactly one of --model_name_or_path"),
    ],
)
def test_shared_checks_are_usage_errors_naming_the_flag(extra, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        _parse(["--output_dir", str(tmp_path), *extra])
    assert stopped.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_an_output_dir_that_is_a_file_is_refused(tmp_path, capsys):
    existing = tmp_path / "file.txt"
    existing.write_text("keep")
    with pytest.raises(SystemExit):
        _parse(["--config_name", "x", "--output_dir", str(existing)])
    assert "--output_dir" in capsys.readouterr().err and existing.read_text() == "keep"


@pytest.mark.parametrize("build_parser", [ade20k_parser, coco_parser])
def test_both_fine_tunes_take_the_shared_flags_from_one_home(build_parser):
    """Every shared flag of each fine-tune is the shared definition (same default, type, help), except the recipe
    defaults passed in (learning rate, weight decay) and the schedule's end in `--stop_after_step`'s help."""
    own = {action.dest: action for action in build_parser()._actions}
    for shared in _shared_parser()._actions:
        if shared.dest in ("help", "model_name_or_path", "config_name"):
            continue
        action = own[shared.dest]
        assert (action.option_strings, action.type, action.required, action.choices) == (
            shared.option_strings,
            shared.type,
            shared.required,
            shared.choices,
        ), shared.dest
        if shared.dest not in ("learning_rate", "weight_decay"):
            assert action.default == shared.default, shared.dest
        if shared.dest != "stop_after_step":
            assert action.help == shared.help, shared.dest
