"""scripts/evaluate_imagenet.py on bad input (a clear `error:` line and exit status 2, never a traceback) and on a
folder with a single class sub-folder."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from paca_hf import PaCaViTForImageClassification, PaCaViTImageProcessor
from paca_hf.training.imagenet_evaluation import evaluate_image_folder

from tiny_configs import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["class0", "class1", "class2"]


def _script():
    spec = importlib.util.spec_from_file_location("evaluate_imagenet", ROOT / "scripts" / "evaluate_imagenet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classifier")
    torch.manual_seed(0)
    config = tiny_config(id2label=dict(enumerate(NAMES)), label2id={name: i for i, name in enumerate(NAMES)})
    PaCaViTForImageClassification(config).save_pretrained(folder)
    PaCaViTImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _images(folder: Path, count: int, seed: int = 0):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{index}.png")


def test_one_class_sub_folder_is_evaluated_as_that_class(classifier, tmp_path):
    _images(tmp_path / "val" / "class1", 3)
    scored = evaluate_image_folder(str(classifier), str(tmp_path / "val"), num_workers=0, cache_dir=str(tmp_path / "c"))
    assert scored["num_classes"] == 1 and scored["num_samples"] == 3 and scored["label_mapping"] == "names"
    model = PaCaViTForImageClassification.from_pretrained(classifier).eval()
    processor = PaCaViTImageProcessor.from_pretrained(classifier)
    with torch.no_grad():
        logits = torch.cat([
            model(**processor(Image.open(tmp_path / "val" / "class1" / f"{i}.png"), return_tensors="pt")).logits
            for i in range(3)
        ])
    ranks = (logits > logits[:, 1:2]).sum(1)  # classes scored above the true one, class1
    assert scored["top1"] == pytest.approx(float((ranks < 1).float().mean()))
    assert scored["top5"] == 1.0

