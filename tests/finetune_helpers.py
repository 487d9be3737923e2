"""Shared by the fine-tuning tests: a tiny model config and the script loaded as a module."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "finetune_ade20k.py"

TINY = {
    "model_type": "pacavit",
    "hidden_sizes": [16, 24, 32, 40],
    "depths": [1, 1, 1, 1],
    "num_attention_heads": [1, 1, 2, 2],
    "mlp_ratios": [2, 2, 2, 2],
    "num_clusters": [4, 4, 4, 0],
    "clustering_kernel_size": 3,
    "decode_head_hidden_size": 16,
    "drop_path_rate": 0.1,
}


def load_script(module_name: str):
    """A private copy of scripts/finetune_ade20k.py (each test file patches its own)."""
    spec = importlib.util.spec_from_file_location(module_name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "config.json"
    path.write_text(json.dumps(TINY))
    return path
