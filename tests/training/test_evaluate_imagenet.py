"""scripts/evaluate_imagenet.py on bad input (a clear `error:` line and exit status 2, never a traceback) and on a
folder with a single class sub-folder."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_configs import tiny_config

from paca_hf import PaCaViTForImageClassification, PaCaViTImageProcessor
from paca_hf.training.classification.evaluation import evaluate_image_folder, main


pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["class0", "class1", "class2"]


def _script_main():
    """`main` of scripts/evaluate_imagenet.py (its command line lives in the package)."""
    return main


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
    scored = evaluate_image_folder(
        str(classifier), str(tmp_path / "val"), num_workers=0, cache_dir=str(tmp_path / "c")
    )
    assert scored["num_classes"] == 1 and scored["num_samples"] == 3 and scored["label_mapping"] == "names"
    model = PaCaViTForImageClassification.from_pretrained(classifier).eval()
    processor = PaCaViTImageProcessor.from_pretrained(classifier)
    with torch.no_grad():
        logits = torch.cat(
            [
                model(**processor(Image.open(tmp_path / "val" / "class1" / f"{i}.png"), return_tensors="pt")).logits
                for i in range(3)
            ]
        )
    ranks = (logits > logits[:, 1:2]).sum(1)  # classes scored above the true one, class1
    assert scored["top1"] == pytest.approx(float((ranks < 1).float().mean()))
    assert scored["top5"] == 1.0


def test_bad_input_is_one_error_line_and_exit_status_2(classifier, tmp_path, capsys):
    main = _script_main()
    cache = ["--cache_dir", str(tmp_path / "c"), "--num_workers", "0"]

    assert main(["--model", str(classifier), "--validation_dir", str(tmp_path / "absent"), *cache]) == 2
    assert "absent does not exist" in capsys.readouterr().err

    _images(tmp_path / "flat", 2)  # images, but no class sub-folders
    assert main(["--model", str(classifier), "--validation_dir", str(tmp_path / "flat"), *cache]) == 2
    assert "has no class sub-folders" in capsys.readouterr().err

    _images(tmp_path / "two" / "a", 1)
    _images(tmp_path / "two" / "b", 1)  # names unknown to the model, 2 folders for 3 classes
    assert main(["--model", str(classifier), "--validation_dir", str(tmp_path / "two"), *cache]) == 2
    assert "cannot be mapped" in capsys.readouterr().err

    with pytest.raises(SystemExit) as stopped:
        main(["--model", str(classifier), "--validation_dir", str(tmp_path / "two"), "--output", str(tmp_path)])
    assert stopped.value.code == 2 and "is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("num_workers", ["0", "1"])
def test_a_corrupt_image_is_named(classifier, tmp_path, capsys, num_workers):
    _images(tmp_path / "val" / "class0", 2)
    (tmp_path / "val" / "class0" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    argv = [
        "--model",
        str(classifier),
        "--validation_dir",
        str(tmp_path / "val"),
        "--num_workers",
        num_workers,
        "--cache_dir",
        str(tmp_path / "c"),
    ]
    assert _script_main()(argv) == 2
    err = capsys.readouterr().err
    last = err.strip().split("\n")[-1]  # after the weight-loading progress bar
    assert last.startswith("error: ") and "broken.jpg" in last and "Traceback" not in err
