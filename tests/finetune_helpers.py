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


def finetune_argv(config, output_dir, *extra, image_size, num_train_images, num_eval_images, steps):
    """Arguments of scripts/finetune_ade20k.py for a few steps of a tiny model on the built-in scenes; `extra` come
    last, so they override these."""
    return [
        "--config_name", str(config), "--num_clusters", "keep",
        "--dataset_name", "builtin-scenes", "--builtin_image_size", str(image_size), "--crop_size", str(image_size),
        "--num_train_images", str(num_train_images), "--num_eval_images", str(num_eval_images),
        "--max_train_steps", str(steps), "--num_warmup_steps", "1", "--learning_rate", "1e-3",
        "--output_dir", str(output_dir), "--disable_tqdm", *extra,
    ]


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "config.json"
    path.write_text(json.dumps(TINY))
    return path
