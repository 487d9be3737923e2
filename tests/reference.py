"""Access to the authors' reference outputs in ../shared/reference (see its README)."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from paca_hf import PaCaViTConfig
from paca_hf.convert import config_from_authors_settings, convert_state_dict, load_checkpoint


REFERENCE_DIR = Path(
    os.environ.get("PACA_REFERENCE_DIR", Path(__file__).resolve().parents[2] / "shared" / "reference")
)


def require_reference() -> Path:
    if not (REFERENCE_DIR / "cases.json").is_file():
        pytest.fail(f"The authors' reference outputs are missing: expected {REFERENCE_DIR}/cases.json.")
    return REFERENCE_DIR


def cases() -> dict:
    return json.loads((require_reference() / "cases.json").read_text())


def manifest() -> dict:
    return json.loads((require_reference() / "official_checkpoint_manifest.json").read_text())


def upernet_maskrcnn_manifest() -> dict:
    """Keys, shapes and counts of the authors' 3 UperNet and 4 Mask R-CNN checkpoints."""
    return json.loads((require_reference() / "official_checkpoint_manifest_upernet_maskrcnn.json").read_text())


def case_config(name: str) -> PaCaViTConfig:
    """Our config for a reference case, translated from the authors' terms in cases.json."""
    case = cases()[name]
    kwargs = {
        "teacher_depths": case.get("teacher_depths"),
        "drop_path_rate": 0.0,
        "num_labels": max(case["num_classes"], 1),
    }
    paca = dict(case["paca"], clusters=case.get("downstream_clusters", case["paca"]["clusters"]))
    if case["task"] == "semantic-segmentation":
        kwargs.update(
            decode_head_hidden_size=case["head_channels"],
            cluster_loss_weight=case["aux_loss_weight"],
            semantic_loss_ignore_index=case["ignore_index"],
        )
    if case["task"] in ("semantic-segmentation", "backbone"):
        kwargs["out_features"] = ["stage1", "stage2", "stage3", "stage4"]
    return config_from_authors_settings(case["arch"], paca, **kwargs)


def case_io(name: str) -> dict:
    return load_file(require_reference() / f"{name}.io.safetensors")


def case_checkpoint(name: str) -> Path:
    return require_reference() / f"{name}.pth"


def converted(name: str, model_class, **overrides):
    """Our `model_class` for reference case `name` (config fields overridden by `overrides`), with the authors'
    checkpoint converted strictly into it (no key left over), in eval mode."""
    config = case_config(name)
    for key, value in overrides.items():
        setattr(config, key, value)
    model = model_class(config)
    weights, unused = convert_state_dict(load_checkpoint(case_checkpoint(name)), model, config.clustering_type)
    assert unused == []
    model.load_state_dict(weights, strict=True)
    return model.eval()


def random_state_dict(entry: dict) -> dict:
    """A state dict in the layout of a released checkpoint (`entry`: its manifest entry, keys -> shapes), with seeded
    random values, except where a random value would not be a valid checkpoint (the blur filter's constant taps, a
    batch counter, positive running variances)."""
    generator = torch.Generator().manual_seed(0)
    state_dict = {}
    for key, shape in entry["state_dict"].items():
        if key.endswith("blur_filter"):  # a constant of the authors' BlurConv2d, not a weight
            taps = torch.tensor([1.0, 2.0, 1.0])
            state_dict[key] = (taps[:, None] * taps[None, :] / 16).expand(shape).clone()
        elif key.endswith("num_batches_tracked"):
            state_dict[key] = torch.tensor(7)
        elif key.endswith("running_var"):  # a variance: positive, or the model computes NaN
            state_dict[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state_dict[key] = torch.randn(shape, generator=generator)
    return state_dict
