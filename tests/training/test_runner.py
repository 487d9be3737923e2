"""The pieces of the two fine-tunes' loops in the shared runner (`checkpoint_due`, `resume_position`,
`tracker_config`, `accumulated_step`), the demo fine-tunes' shared run (`paca_hf.training.runner.run_demo_finetune`, `default_threads`) and the font of
their pictures (`paca_hf.visualization.load_font`)."""

import argparse
import json

import pytest
import torch
from accelerate import Accelerator

from paca_hf import training as T
from paca_hf.training import runner
from paca_hf.training.detection import demo as detection_demo
from paca_hf.training.segmentation import demo as segmentation_demo
from paca_hf.training.throughput import DataWaitMeter
from paca_hf.visualization import load_font


@pytest.mark.parametrize("cores, threads", [(None, 1), (1, 1), (2, 1), (3, 1), (4, 2), (10, 5), (64, 8)])
def test_default_threads(monkeypatch, cores, threads):
    monkeypatch.setattr(runner.os, "cpu_count", lambda: cores)
    assert runner.default_threads() == threads
    assert segmentation_demo.default_threads() == detection_demo.default_threads() == threads


@pytest.mark.parametrize(
    "demo, config, config_name",
    [
        (segmentation_demo, segmentation_demo.DEMO_MODEL, "demo_model_config.json"),
        (detection_demo, detection_demo.DEMO_DETECTOR, "demo_detector_config.json"),
    ],
)
def test_both_demos_run_their_fine_tune_through_the_shared_run(demo, config, config_name, monkeypatch, tmp_path):
    seen = {}

    def fake_main(argv):
        seen["argv"], seen["threads"] = argv, torch.get_num_threads()
        return {"done": True}

    monkeypatch.setattr(demo.finetune, "main", fake_main)
    threads = torch.get_num_threads()
    try:
        results, minutes = demo.run_finetune(tmp_path / "out", seed=3, settings=None, threads=1, quiet=True)
    finally:
        torch.set_num_threads(threads)
    config_path = tmp_path / "out" / config_name
    assert results == {"done": True} and 0 <= minutes < 1 and seen["threads"] == 1
    assert json.loads(config_path.read_text()) == json.loads(json.dumps(config))
    assert seen["argv"] == [*demo.finetune_argv(tmp_path / "out", config_path, 3, None), "--disable_tqdm"]


def test_load_font_scales_where_pillow_can():
    font = load_font(13)
    assert getattr(font, "size", 13) == 13
    assert load_font() is not None


@pytest.mark.parametrize(
    "checkpointing_steps, step, accumulation, batches_per_epoch, name",
    [
        (None, 4, 1, 3, None),
        (2, 4, 1, 3, "step_4"),
        (2, 3, 1, 3, None),
        ("epoch", 3, 1, 3, "epoch_0"),
        ("epoch", 2, 1, 3, None),
        ("epoch", 2, 2, 3, "epoch_0"),  # batches 3-4 of 3 per epoch: epoch 0 ended inside this step
        ("epoch", 3, 2, 3, "epoch_1"),  # batches 5-6
        ("epoch", 3, 1, 0, None),
    ],
)
def test_checkpoint_due(checkpointing_steps, step, accumulation, batches_per_epoch, name):
    assert runner.checkpoint_due(checkpointing_steps, step, accumulation, batches_per_epoch) == name


def test_resume_position():
    assert runner.resume_position(5, 2, 3) == (3, 1)  # 10 batches of 3 per epoch: 3 epochs and 1 batch
    assert runner.resume_position(4, 1, 0) == (4, 0)


def test_tracker_config_stringifies_what_trackers_cannot_take():
    args = argparse.Namespace(steps=3, lr=0.5, name="x", flag=True, none=None, scale=(4, 2), edges=[1, 2])
    assert runner.tracker_config(args) == {
        "steps": 3,
        "lr": 0.5,
        "name": "x",
        "flag": True,
        "none": None,
        "scale": "(4, 2)",
        "edges": "[1, 2]",
    }


@pytest.mark.parametrize("max_grad_norm, weight", [(None, -1.0), (0.5, 0.5)])
def test_accumulated_step_averages_the_batches_clips_and_steps_once(max_grad_norm, weight):
    """loss = w * x on batches x = 1 and x = 3 with w = 1, SGD lr 1: the step's gradient is the mean, 2, so w becomes
    -1; clipped to norm 0.5, w becomes 0.5. The reported value is the mean loss, 2; the scheduler steps once."""
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    try:
        model = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.ones_(model.weight)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        stream = iter([(0, 1.0), (1, 3.0)])
        args = argparse.Namespace(gradient_accumulation_steps=2, max_grad_norm=max_grad_norm)

        def forward(x):
            loss = model(torch.tensor([[x]])).sum()
            return loss, torch.stack([loss, 2 * loss])

        epoch, values = runner.accumulated_step(
            accelerator, model, optimizer, scheduler, stream, DataWaitMeter(), args, 1, lambda x: x, forward
        )
        assert epoch == 1 and values.tolist() == [2.0, 4.0]
        assert model.weight.item() == pytest.approx(weight)
        assert scheduler.scheduler.last_epoch == 1
        bad = iter([(0, float("nan")), (0, 1.0)])
        with pytest.raises(T.NonFiniteError, match="step 7"):
            runner.accumulated_step(
                accelerator, model, optimizer, scheduler, bad, DataWaitMeter(), args, 7, lambda x: x, forward
            )
    finally:
        runner.reset_accelerate_state(accelerator)


def test_make_adamw_takes_the_flags():
    weight = torch.nn.Parameter(torch.ones(2))
    args = argparse.Namespace(learning_rate=0.1, adam_beta1=0.8, adam_beta2=0.9, adam_epsilon=1e-6, weight_decay=0.2)
    optimizer = runner.make_adamw([{"params": [weight], "weight_decay": 0.0}], args)
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (0.1, (0.8, 0.9), 1e-6, 0.0)
    assert optimizer.defaults["weight_decay"] == 0.2


def test_resolve_resume(tmp_path, caplog):
    args = argparse.Namespace(resume_from_checkpoint=None, output_dir=str(tmp_path))
    assert runner.resolve_resume(args) == (None, None)
    args.resume_from_checkpoint = "latest"
    with caplog.at_level("WARNING", logger="paca_hf.training"):
        assert runner.resolve_resume(args) == (None, None)
    assert caplog.records  # no checkpoint yet: training starts from the beginning, with a warning
    args.resume_from_checkpoint = str(tmp_path / "step_5")
    with pytest.raises(T.CheckpointError):
        runner.resolve_resume(args)


def test_run_with_accelerator_resets_accelerate_also_after_an_error(tmp_path):
    from accelerate.state import AcceleratorState

    from paca_hf.training.segmentation.arguments import parse_args

    args = parse_args(["--config_name", "x", "--output_dir", str(tmp_path), "--cpu"])
    assert runner.run_with_accelerator(args, lambda a, accelerator: (a, accelerator.device.type)) == (args, "cpu")
    assert AcceleratorState._shared_state == {}

    def fails(a, accelerator):
        raise T.TrainingError("stop")

    with pytest.raises(T.TrainingError, match="stop"):
        runner.run_with_accelerator(args, fails)
    assert AcceleratorState._shared_state == {}
