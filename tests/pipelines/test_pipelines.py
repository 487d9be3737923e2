"""Real transformers clients: Auto classes and pipelines on converted reference models."""

import builtins
import json
import logging
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from reference import case_checkpoint, case_config
from remote_code_helpers import REMOTE_SCRIPT_PROLOGUE, ErrorRecorder
from tiny_configs import tiny_config
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline
from transformers.utils import logging as transformers_logging

import paca_hf
from paca_hf import PaCaViTForSemanticSegmentation, PaCaViTImageProcessor
from paca_hf.hub import add_remote_code, convert_checkpoint


def scene(width=120, height=90):
    """A real RGB picture: a red disc on a blue-green gradient."""
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 160)], axis=-1).astype(np.uint8)
    array[(x - width // 3) ** 2 + (y - height // 2) ** 2 < (height // 4) ** 2] = (220, 20, 20)
    return Image.fromarray(array)


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classifier")
    config = case_config("cls_conv_stagewise")
    config.id2label = {index: f"class_{index}" for index in range(10)}
    config.label2id = {label: index for index, label in config.id2label.items()}
    convert_checkpoint(case_checkpoint("cls_conv_stagewise"), config, folder / "model")
    return folder / "model"


def test_auto_classes_load_a_converted_folder(classifier_folder):
    processor = AutoImageProcessor.from_pretrained(classifier_folder)
    assert isinstance(processor, PaCaViTImageProcessor)
    model = AutoModelForImageClassification.from_pretrained(classifier_folder).eval()
    inputs = processor(scene(), return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 224, 224)
    with torch.no_grad():
        assert model(**inputs).logits.shape == (1, 10)


def test_image_classification_pipeline(classifier_folder):
    classify = pipeline("image-classification", model=str(classifier_folder), device="cpu")
    predictions = classify(scene(), top_k=3)
    assert len(predictions) == 3
    assert all(p["label"].startswith("class_") for p in predictions)
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1
    # The pipeline's answer is the model's own softmax on the processor's output.
    processor = AutoImageProcessor.from_pretrained(classifier_folder)
    model = AutoModelForImageClassification.from_pretrained(classifier_folder).eval()
    with torch.no_grad():
        probabilities = model(**processor(scene(), return_tensors="pt")).logits.softmax(-1)[0]
    best = int(probabilities.argmax())
    assert predictions[0]["label"] == f"class_{best}"
    assert predictions[0]["score"] == pytest.approx(float(probabilities[best]), abs=1e-5)


def test_image_segmentation_pipeline_masks(tmp_path):
    config = case_config("seg_pacahead_conv")
    config.id2label = dict(enumerate(["sky", "tree", "road", "car", "person", "wall"]))
    config.label2id = {label: index for index, label in config.id2label.items()}
    convert_checkpoint(case_checkpoint("seg_pacahead_conv"), config, tmp_path / "seg", task="semantic-segmentation")
    segment = pipeline("image-segmentation", model=str(tmp_path / "seg"), device="cpu")
    image = scene(width=150, height=100)
    results = segment(image)
    assert results, "no masks"
    # One mask per label present in the model's prediction, at the image's size, named from id2label.
    model = PaCaViTForSemanticSegmentation.from_pretrained(tmp_path / "seg").eval()
    processor = AutoImageProcessor.from_pretrained(tmp_path / "seg")
    with torch.no_grad():
        outputs = model(**processor(image, return_tensors="pt"))
    prediction = processor.post_process_semantic_segmentation(outputs, target_sizes=[(100, 150)])[0]
    present = sorted(int(label) for label in prediction.unique())
    assert sorted(r["label"] for r in results) == sorted(config.id2label[label] for label in present)
    for result in results:
        mask = np.array(result["mask"])
        assert mask.shape == (100, 150)
        label = config.label2id[result["label"]]
        np.testing.assert_array_equal(mask > 0, prediction.numpy() == label)


def test_image_segmentation_pipeline_on_images_of_different_shapes(tmp_path):
    """A list of pictures of different shapes in one call, at the pipeline's default batch size, with a segmentation
    processor (aspect kept, no crop): each gets masks at its own size, those it gets alone."""
    from paca_hf.training.segmentation import recipe_image_processor

    torch.manual_seed(0)
    PaCaViTForSemanticSegmentation(tiny_config(num_labels=4)).save_pretrained(tmp_path / "seg")
    recipe_image_processor((256, 64), reduce_labels=True).save_pretrained(tmp_path / "seg")  # shorter side 64
    segment = pipeline("image-segmentation", model=str(tmp_path / "seg"), device="cpu")
    images = [scene(width=150, height=100), scene(width=64, height=96), scene(width=150, height=100).rotate(90)]
    together = segment(images)
    assert len(together) == 3
    for image, results in zip(images, together):
        alone = segment(image)
        assert results and [r["label"] for r in results] == [r["label"] for r in alone]
        for result, single in zip(results, alone):
            assert np.array(result["mask"]).shape == (image.height, image.width)
            np.testing.assert_array_equal(np.array(result["mask"]), np.array(single["mask"]))


class RecordingStdin:
    """Stands for a closed standard input and records every attempt to read it."""

    def __init__(self):
        self.reads = []
        self.closed = True

    def _read(self, method, *args):
        self.reads.append(method)
        raise ValueError("I/O operation on closed file (standard input is closed in this test).")

    def read(self, *args):
        return self._read("read", *args)

    def readline(self, *args):
        return self._read("readline", *args)

    def fileno(self):
        return self._read("fileno")

    def isatty(self):
        return False


@pytest.mark.parametrize(
    "task, model_class, hub_task",
    [
        ("image-classification", "PaCaViTForImageClassification", "image-classification"),
        ("image-feature-extraction", "PaCaViTModel", "image-classification"),
        ("image-segmentation", "PaCaViTForSemanticSegmentation", "semantic-segmentation"),
    ],
)
def test_pipelines_on_a_hub_ready_folder_ask_nothing_and_log_no_error(
    task, model_class, hub_task, tmp_path, monkeypatch
):
    """A converted Hub-ready folder (config.json with an `auto_map` to remote code files) with paca_hf installed:
    the pipeline uses the installed classes, never reads standard input (transformers' "Do you wish to run the
    custom code? [y/N]") and logs nothing at ERROR."""
    config = tiny_config(num_labels=3)
    getattr(paca_hf, model_class)(config).save_pretrained(tmp_path)
    PaCaViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    add_remote_code(tmp_path, hub_task)
    assert "auto_map" in json.loads((tmp_path / "config.json").read_text())

    stdin = RecordingStdin()
    monkeypatch.setattr(sys, "stdin", stdin)
    prompts = []
    monkeypatch.setattr(builtins, "input", lambda *args: prompts.append(args) or "")
    errors = ErrorRecorder()
    loggers = [logging.getLogger(), transformers_logging.get_logger("transformers")]
    for logger in loggers:
        logger.addHandler(errors)
    try:
        run = pipeline(task, model=str(tmp_path), device="cpu")
        output = run(scene())
    finally:
        for logger in loggers:
            logger.removeHandler(errors)
    assert prompts == [] and stdin.reads == []
    assert errors.messages == []
    assert type(run.model) is getattr(paca_hf, model_class)
    assert type(run.image_processor) is PaCaViTImageProcessor
    assert output, f"{task} returned nothing"


_REMOTE_SEGMENTATION = (
    REMOTE_SCRIPT_PROLOGUE
    + """segmenter = pipeline("image-segmentation", model=sys.argv[1], trust_remote_code=True, device="cpu")
assert type(segmenter.model).__module__.startswith("transformers_modules."), type(segmenter.model)
image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
segments = segmenter(image)
masks = np.stack([np.array(segment["mask"]) > 0 for segment in segments])
assert masks.shape[1:] == (90, 120) and (masks.sum(axis=0) == 1).all()
print("ERRORS:", errors.messages)
"""
)


def test_remote_code_segmentation_pipeline_logs_no_error(tmp_path):
    """A Hub-ready PaCa-head segmentor loaded with `trust_remote_code=True` where paca_hf is not installed: the
    image-segmentation pipeline runs it and logs no error (transformers checks the class name against its table of
    segmentation models, which the remote modeling file fills in for `pacavit`)."""
    import subprocess

    from paca_hf.hub import hidden_package_environment

    folder = tmp_path / "repo"
    PaCaViTForSemanticSegmentation(tiny_config(num_labels=3)).save_pretrained(folder)
    PaCaViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    add_remote_code(folder, "semantic-segmentation")
    env = hidden_package_environment(tmp_path / "sandbox")
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", _REMOTE_SEGMENTATION, str(folder)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ERRORS: []" in result.stdout, result.stdout[-2000:]


@pytest.mark.parametrize(
    "task, model_class, takes_arrays",
    [
        ("image-classification", "PaCaViTForImageClassification", True),
        ("image-feature-extraction", "PaCaViTModel", False),
        ("image-segmentation", "PaCaViTForSemanticSegmentation", False),
    ],
)
def test_pipeline_inputs_as_the_readme_lists_them(task, model_class, takes_arrays, tmp_path):
    """transformers' pipelines decode their inputs themselves: each takes PIL images, local paths as `str` and base64
    strings; only image-classification takes numpy arrays and tensors; none takes a `pathlib.Path` or a `file://`
    URL. Whatever a pipeline refuses, the package's decoder (`paca_hf.images.load_image`) turns into the input that
    gives the same output."""
    import base64

    from paca_hf.images import load_image

    def same(output, expected):
        if isinstance(expected, list) and expected and isinstance(expected[0], dict) and "mask" in expected[0]:
            return [(o["label"], np.asarray(o["mask"]).tolist()) for o in output] == [
                (e["label"], np.asarray(e["mask"]).tolist()) for e in expected
            ]
        return output == expected

    folder = tmp_path / "model"
    getattr(paca_hf, model_class)(tiny_config(num_labels=3)).save_pretrained(folder)
    PaCaViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    run = pipeline(task, model=str(folder), device="cpu")
    image = scene()
    path = tmp_path / "scene.png"
    image.save(path)
    expected = run(image)
    assert same(run(str(path)), expected)
    assert same(run(base64.b64encode(path.read_bytes()).decode()), expected)
    array = np.asarray(image)
    for value, taken in (
        (array, takes_arrays),
        (torch.from_numpy(array), takes_arrays),
        (path, False),
        (path.as_uri(), False),
    ):
        if taken:
            assert same(run(value), expected), type(value)
        else:
            with pytest.raises((TypeError, ValueError)):
                run(value)
        assert same(run(load_image(value)), expected), type(value)
