"""The recipe's last details: mmseg's loss normalisation (`--avg_non_ignore`) against a hand computation, the warning
of a run that never leaves its warm-up, and `scripts/cluster_nmi.py` scoring held-out scenes by default."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from finetune_helpers import finetune_argv
from tiny_configs import tiny_config

from paca_hf import PaCaViTForSemanticSegmentation
from paca_hf.data.scenes import make_scene_splits
from paca_hf.metrics.cluster_nmi import load_examples
from paca_hf.training.scheduler import warmup_warning
from paca_hf.training.segmentation import finetune
from paca_hf.training.segmentation.model import segmentation_loss


pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]


def _hand_cross_entropy_sum(scores, labels, ignore_index=255):
    """Sum over the non-ignored pixels of -log softmax(scores)[label], written out (no F.cross_entropy)."""
    upsampled = F.interpolate(scores, size=labels.shape[-2:], mode="bilinear", align_corners=False).double()
    log_probs = upsampled - upsampled.exp().sum(dim=1, keepdim=True).log()
    total = 0.0
    for b, y, x in zip(*np.nonzero((labels != ignore_index).numpy())):
        total -= float(log_probs[b, labels[b, y, x], y, x])
    return total


def test_loss_normalisation_matches_a_hand_computation():
    """A batch where 40% of the pixels are ignored: `avg_non_ignore=True` divides the summed cross-entropy by the
    non-ignored pixels, `False` by all pixels (mmseg's default), for the decode and the clustering term."""
    torch.manual_seed(0)
    model = PaCaViTForSemanticSegmentation(tiny_config(num_labels=5)).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    labels = torch.randint(0, 5, (2, 32, 32))
    labels[0, :, :16] = 255  # half of image 0
    labels[1, :10, :19] = 255
    labels[1, 20:, 20:] = 255
    num_all, num_scored = labels.numel(), int((labels != 255).sum())
    assert 0.3 < 1 - num_scored / num_all < 0.5

    with torch.no_grad():
        logits, cluster_logits = model.decode_head(
            model.pacavit(pixel_values, output_hidden_states=True).hidden_states
        )
        summed = _hand_cross_entropy_sum(logits, labels) + 0.4 * _hand_cross_entropy_sum(cluster_logits, labels)
        non_ignored, _ = segmentation_loss(model, pixel_values, labels, avg_non_ignore=True)
        all_pixels, _ = segmentation_loss(model, pixel_values, labels, avg_non_ignore=False)
    assert model.config.cluster_loss_weight == 0.4
    assert non_ignored.item() == pytest.approx(summed / num_scored, rel=1e-5)
    assert all_pixels.item() == pytest.approx(summed / num_all, rel=1e-5)

    # Without ignored pixels both are the plain mean; with only ignored pixels both are 0 (mmseg's empty mean).
    full = torch.randint(0, 5, (2, 32, 32))
    with torch.no_grad():
        both = [segmentation_loss(model, pixel_values, full, avg_non_ignore=flag)[0].item() for flag in (True, False)]
        empty = [
            segmentation_loss(model, pixel_values, torch.full_like(full, 255), avg_non_ignore=flag)[0].item()
            for flag in (True, False)
        ]
    assert both[0] == pytest.approx(both[1], rel=1e-6)
    assert empty == [0.0, 0.0]


def test_the_recipe_averages_over_non_ignored_pixels_by_default(tiny_config_file):
    """The PaCa-head recipe's default is the authors' `avg_non_ignore=True`; the flag switches to all pixels."""
    common = ["--config_name", str(tiny_config_file), "--output_dir", "unused"]
    assert finetune.parse_args(common).avg_non_ignore is True
    assert finetune.parse_args([*common, "--no-avg_non_ignore"]).avg_non_ignore is False


def test_a_run_shorter_than_its_warmup_says_so(tiny_config_file, tmp_path, caplog):
    """The default 1,500 warm-up steps in a 5-step run: the lr of the last step is 6e-5 x (1e-6 + 4 / 1500). And the
    loop trains with the chosen normalisation: the same first batch gives a smaller loss over all pixels."""
    message = warmup_warning(1500, 5, 6e-5)
    peak = 6e-5 * (1e-6 + (1 - 1e-6) * 4 / 1500)
    assert peak < 2e-7 and f"{peak:.3g}" in message and "--num_warmup_steps 1500" in message
    assert warmup_warning(1500, 1500, 6e-5) is not None  # warm-up ends exactly at the last step: still never at 6e-5
    assert warmup_warning(1, 5, 6e-5) is None and warmup_warning(1500, 0, 6e-5) is None

    argv = finetune_argv(
        tiny_config_file,
        tmp_path / "short",
        "--num_warmup_steps",
        "10",
        image_size=32,
        num_train_images=2,
        num_eval_images=1,
        steps=1,
    )
    with caplog.at_level(logging.WARNING, logger="paca_hf.training.segmentation.finetune"):
        default = finetune.main(argv)
    expected = warmup_warning(10, 1, 1e-3)
    assert [r.getMessage() for r in caplog.records if "warm-up" in r.getMessage()] == [expected]
    all_pixels = finetune.main([*argv, "--output_dir", str(tmp_path / "all"), "--no-avg_non_ignore"])
    assert default["avg_non_ignore"] is True and all_pixels["avg_non_ignore"] is False
    assert 0 < all_pixels["train_loss"] < default["train_loss"]


def test_cluster_nmi_scores_held_out_scenes_by_default(tmp_path):
    """`--dataset builtin` without `--split` scores scenes that no fine-tune on the built-in scenes trains on, and
    says which split it scored; `--split train` gives the training scenes."""
    held_out, split = load_examples("builtin", num_images=4, image_size=32, return_split=True)
    assert split == "validation"
    training = make_scene_splits(num_train=400, num_validation=1, image_size=(32, 32))["train"]
    train_images = {np.asarray(example["image"]).tobytes() for example in training}
    assert not any(np.asarray(example["image"]).tobytes() in train_images for example in held_out)
    train_split = load_examples("builtin", split="train", num_images=4, image_size=32)
    assert all(np.asarray(example["image"]).tobytes() in train_images for example in train_split)
    with pytest.raises(ValueError, match="--split test"):
        load_examples("builtin", split="test")

    PaCaViTForSemanticSegmentation(tiny_config(num_labels=150)).save_pretrained(tmp_path / "model")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "cluster_nmi.py"),
            "--model",
            str(tmp_path / "model"),
            "--num-images",
            "2",
            "--image-size",
            "32",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "scored 2 images of 'builtin', split 'validation'" in result.stdout
