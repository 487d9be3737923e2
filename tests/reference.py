"""Access to the authors' reference outputs in ../shared/reference (see its README)."""

import json
import os
from pathlib import Path

import pytest
from safetensors.torch import load_file

from paca_hf import PaCaViTConfig
from paca_hf.convert import config_from_authors_settings


REFERENCE_DIR = Path(os.environ.get("PACA_REFERENCE_DIR", Path(__file__).resolve().parents[2] / "shared" / "reference"))


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
    kwargs = dict(teacher_depths=case.get("teacher_depths"), drop_path_rate=0.0, num_labels=max(case["num_classes"], 1))
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
