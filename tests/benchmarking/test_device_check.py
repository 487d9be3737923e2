"""scripts/device_check.sh: its CPU dry mode (`--cpu --quick`) runs the three steps of the GPU check and prints the
one table; the outcome check catches a non-finite loss and a missing model."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from paca_hf.benchmarking import device_check


SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "device_check.sh"


def test_dry_mode_runs_every_step_and_prints_the_table(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    completed = subprocess.run(
        ["bash", str(SCRIPT), "--cpu", "--quick", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    table = (tmp_path / "device_check.txt").read_text()
    assert table == completed.stdout
    assert "device check: PASSED" in table
    rows = [line.split() for line in table.splitlines()]
    models = {row[1] for row in rows if row and row[0] == "inference"}
    assert models == {"pvtv2-b2", *device_check.CHUNK_SETTINGS}
    trained = [row for row in rows if row[:2] == ["segmentation", "train"]]
    assert {row[2] for row in trained} == {"segformer-b2", *device_check.CHUNK_SETTINGS}
    for row in trained:
        images_per_s, peak_mib = float(row[6]), float(row[7])  # what, model, "64", "x2", "fp32", images/s, peak
        assert images_per_s > 0 and peak_mib > 0
    outcome = device_check.finetune_outcome(tmp_path / "finetune")
    assert outcome["finite_loss"] and outcome["saved_model"] and outcome["train_steps"] == 2
    assert 0 <= outcome["data_wait_fraction"] < 1


def test_outcome_flags_a_non_finite_loss_and_a_missing_model(tmp_path):
    (tmp_path / "all_results.json").write_text(json.dumps({"train_loss": math.nan, "train_steps": 50}))
    outcome = device_check.finetune_outcome(tmp_path)
    assert not outcome["finite_loss"] and not outcome["saved_model"]
    (tmp_path / "all_results.json").write_text(json.dumps({"train_loss": 1.5, "train_steps": 50}))
    (tmp_path / "config.json").write_text("{}")
    assert not device_check.finetune_outcome(tmp_path)["saved_model"]  # no weights
    (tmp_path / "model.safetensors").write_bytes(b"")
    outcome = device_check.finetune_outcome(tmp_path)
    assert outcome["finite_loss"] and outcome["saved_model"]


def test_full_mode_needs_cuda_or_the_dry_mode(capsys):
    if device_check.torch_cuda_available():
        return
    assert device_check.main(["--output-dir", "unused"]) == 2
    assert "--cpu --quick" in capsys.readouterr().err


def test_usage_names_the_shell_script(capsys):
    """Errors print the usage of the documented entry point, not of the module behind it."""
    with pytest.raises(SystemExit):
        device_check.parse_args(["--cpu"])
    assert capsys.readouterr().err.startswith("usage: scripts/device_check.sh")
