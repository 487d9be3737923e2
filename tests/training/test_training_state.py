"""Hardening of the fine-tune's state: corrupt / partial checkpoints are refused with a clear message,
`latest` skips them (and says so), a run killed while saving leaves the previous checkpoint usable, and a NaN
loss stops the run with the step number before anything non-finite is written."""

import hashlib
import logging
from pathlib import Path

import accelerate
import pytest
import torch
from finetune_helpers import finetune_argv
from safetensors.torch import load_file
from tiny_configs import tiny_config

from paca_hf import PaCaViTForSemanticSegmentation
from paca_hf import training as T
from paca_hf.training.segmentation import finetune


pytestmark = pytest.mark.usefixtures("one_thread")


class SimulatedKill(BaseException):
    """Stands for the process being killed: not an Exception, so nothing in the fine-tune handles it."""


def args_for(config, output_dir, *extra, steps=4):
    return finetune_argv(
        config,
        output_dir,
        "--checkpointing_steps",
        "2",
        "--checkpoints_total_limit",
        "0",
        *extra,
        image_size=48,
        num_train_images=4,
        num_eval_images=2,
        steps=steps,
    )


def tree_digest(folder: Path) -> dict:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def all_saved_tensors_are_finite(folder: Path) -> bool:
    files = list(folder.rglob("*.safetensors"))
    assert files
    return all(
        bool(torch.isfinite(tensor).all())
        for path in files
        for tensor in load_file(str(path)).values()
        if tensor.is_floating_point()
    )


@pytest.fixture(scope="module")
def straight_run(tiny_config_file, tmp_path_factory):
    """An uninterrupted 4-step run with checkpoints at steps 2 and 4 (all kept)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    finetune.main(args_for(tiny_config_file, out))
    return out


@pytest.fixture
def run_with_step_2(straight_run, tmp_path):
    """A fresh output folder holding a copy of the straight run's step_2 checkpoint only."""
    import shutil

    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(straight_run / "step_2", out / "step_2")
    return out


def same_weights(a: Path, b: Path) -> bool:
    first, second = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


# ------------------------------------------------------------------------------------------------ refusals


def test_a_truncated_checkpoint_is_refused_and_nothing_is_written(tiny_config_file, run_with_step_2):
    out = run_with_step_2
    weights = out / "step_2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    before = tree_digest(out)
    with pytest.raises(T.CheckpointError, match=r"is corrupt: model\.safetensors has 1000 bytes"):
        finetune.main(args_for(tiny_config_file, out, "--resume_from_checkpoint", str(out / "step_2")))
    assert tree_digest(out) == before


def test_a_checkpoint_with_flipped_bytes_is_refused(tiny_config_file, run_with_step_2):
    out = run_with_step_2
    optimizer = out / "step_2" / "optimizer.bin"
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    optimizer.write_bytes(bytes(data))
    with pytest.raises(T.CheckpointError, match=r"optimizer\.bin does not match its recorded sha256"):
        finetune.main(args_for(tiny_config_file, out, "--resume_from_checkpoint", "step_2"))
    assert not (out / "model.safetensors").exists() and not (out / "all_results.json").exists()


def test_a_partial_checkpoint_is_refused(tiny_config_file, run_with_step_2):
    out = run_with_step_2
    (out / "step_2" / T.COMPLETE_MARKER).unlink()
    with pytest.raises(T.CheckpointError, match=r"is incomplete: it has no COMPLETE marker"):
        finetune.main(args_for(tiny_config_file, out, "--resume_from_checkpoint", str(out / "step_2")))
    with pytest.raises(T.CheckpointError, match=r"no usable checkpoint"):
        finetune.main(args_for(tiny_config_file, out, "--resume_from_checkpoint", "latest"))
    assert not (out / "model.safetensors").exists()


def test_a_missing_checkpoint_is_refused(tiny_config_file, tmp_path):
    with pytest.raises(T.CheckpointError, match="does not exist"):
        finetune.main(args_for(tiny_config_file, tmp_path / "run", "--resume_from_checkpoint", str(tmp_path / "nope")))


def test_generator_states_need_the_same_number_of_processes():
    state = T.TrainingState(seed=0, process_index=0, num_processes=1)
    saved = state.state_dict()
    saved["generator_states"] = saved["generator_states"] * 2
    with pytest.raises(T.CheckpointError, match="written by 2 process"):
        state.load_state_dict(saved)


# ------------------------------------------------------------------------------------------------ latest


def test_latest_skips_partial_and_corrupt_checkpoints_and_says_so(
    tiny_config_file, straight_run, run_with_step_2, caplog
):
    out = run_with_step_2
    # A newer checkpoint that was interrupted (no marker) and one that was damaged afterwards.
    import shutil

    shutil.copytree(straight_run / "step_4", out / "step_4")
    (out / "step_4" / T.COMPLETE_MARKER).unlink()
    shutil.copytree(straight_run / "step_2", out / "step_3")
    (out / "step_3" / "random_states_0.pkl").write_bytes(b"")
    best, skipped = T.find_latest_checkpoint(out)
    assert best == out / "step_2"
    assert {path.name for path, _ in skipped} == {"step_3", "step_4"}

    caplog.set_level(logging.INFO)
    results = finetune.main(args_for(tiny_config_file, out, "--resume_from_checkpoint", "latest"))
    assert results["resumed_from"].endswith("step_2")
    text = caplog.text
    assert "skipped" in text and "step_4" in text and "incomplete" in text and "step_3" in text and "corrupt" in text
    assert same_weights(out, straight_run)


def test_latest_without_any_checkpoint_starts_from_the_beginning(tiny_config_file, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    results = finetune.main(
        args_for(tiny_config_file, tmp_path / "run", "--resume_from_checkpoint", "latest", steps=1)
    )
    assert results["resumed_from"] is None and results["train_steps"] == 1
    assert "starting from the beginning" in caplog.text


# ------------------------------------------------------------------------------------------------ killed while saving


def test_killed_while_saving_keeps_the_previous_checkpoint(tiny_config_file, straight_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    original = accelerate.Accelerator.save_state

    def save_then_die(self, output_dir=None, *args, **kwargs):
        result = original(self, output_dir, *args, **kwargs)
        if Path(output_dir).name.endswith("step_4"):
            # The files are written but the run dies before the COMPLETE marker and the rename.
            raise SimulatedKill()
        return result

    monkeypatch.setattr(accelerate.Accelerator, "save_state", save_then_die)
    with pytest.raises(SimulatedKill):
        finetune.main(args_for(tiny_config_file, out, "--checkpoints_total_limit", "1"))
    monkeypatch.undo()

    assert T.verify_checkpoint(out / "step_2")["step"] == 2  # the previous one is intact
    assert not (out / "step_4").exists()
    leftovers = T.partial_saves(out)
    assert [p.name for p in leftovers] == [".tmp-step_4"] and not (leftovers[0] / T.COMPLETE_MARKER).exists()
    assert not (out / "model.safetensors").exists() and not (out / "all_results.json").exists()

    results = finetune.main(
        args_for(tiny_config_file, out, "--checkpoints_total_limit", "1", "--resume_from_checkpoint", "latest")
    )
    assert results["resumed_from"].endswith("step_2") and results["train_steps"] == 4
    assert same_weights(out, straight_run)
    # The new checkpoint replaced the old one only once it was complete; the leftover is gone.
    assert [p.name for p in T.list_checkpoints(out)] == ["step_4"] and not T.partial_saves(out)


# ------------------------------------------------------------------------------------------------ NaN


def test_an_exploding_learning_rate_stops_the_run_without_saving_nan(tiny_config_file, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(T.NonFiniteError, match=r"non-finite .*(at|by) step \d+") as error:
        finetune.main(
            args_for(
                tiny_config_file,
                out,
                "--learning_rate",
                "1e6",
                "--checkpointing_steps",
                "1",
                "--num_warmup_steps",
                "0",
                steps=6,
            )
        )
    assert "--learning_rate" in str(error.value)
    assert not (out / "model.safetensors").exists() and not (out / "all_results.json").exists()
    for folder in T.list_checkpoints(out):
        T.verify_checkpoint(folder)
        assert all_saved_tensors_are_finite(folder)


def test_a_nan_loss_names_the_step_and_keeps_the_last_good_checkpoint(tiny_config_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    original = PaCaViTForSemanticSegmentation.forward

    def nan_loss_at_step_3(self, *args, **kwargs):
        outputs = original(self, *args, **kwargs)
        if outputs.loss is not None:  # a training forward (evaluation passes no labels)
            calls["n"] += 1
            if calls["n"] == 3:
                outputs.loss = outputs.loss * float("nan")
        return outputs

    monkeypatch.setattr(PaCaViTForSemanticSegmentation, "forward", nan_loss_at_step_3)
    with pytest.raises(T.NonFiniteError, match=r"loss became non-finite \(nan\) at step 3"):
        finetune.main(args_for(tiny_config_file, out))
    assert calls["n"] == 3
    assert [p.name for p in T.list_checkpoints(out)] == ["step_2"]
    T.verify_checkpoint(out / "step_2")
    assert all_saved_tensors_are_finite(out)
    assert not (out / "model.safetensors").exists() and not (out / "all_results.json").exists()


def test_an_all_ignored_batch_has_zero_loss_not_nan():
    """The loss a training step optimises is the model's own: mmseg's 0 for a batch whose pixels are all ignored,
    not a mean over no pixel (NaN), with zero gradients."""
    model = PaCaViTForSemanticSegmentation(tiny_config(drop_path_rate=0.1, num_labels=3))
    labels = torch.full((2, 32, 32), 255)
    outputs = model(pixel_values=torch.randn(2, 3, 32, 32), labels=labels)
    loss = outputs.loss
    assert loss.item() == 0.0
    loss.backward()
    assert all(p.grad is not None and not p.grad.abs().sum() for p in model.decode_head.parameters())
