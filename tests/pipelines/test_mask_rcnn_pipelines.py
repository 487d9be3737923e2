"""transformers' object-detection and image-segmentation pipelines on a converted Mask R-CNN (the reference detector,
`det_maskrcnn_conv`), single images and batches, against the model and the processor run by hand."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from reference import case_checkpoint, case_config
from remote_code_helpers import REMOTE_SCRIPT_PROLOGUE, ErrorRecorder
from transformers import pipeline
from transformers.utils import logging as transformers_logging

import paca_hf
from paca_hf import PaCaViTMaskRCNNImageProcessor
from paca_hf.data.scenes import scene_arrays
from paca_hf.hub import convert_checkpoint, hidden_package_environment


CASE = "det_maskrcnn_conv"
# The reference's test scale keeps the tiny detector fast; the pipeline reads it from the saved processor.
TEST_SIZE = {"shortest_edge": 160, "longest_edge": 256}
THRESHOLD = 0.1  # the random-weight detector's scores lie around 0.1-0.7


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("detector") / "repo"
    convert_checkpoint(case_checkpoint(CASE), case_config(CASE), folder, task="instance-segmentation")
    settings = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({**settings, "size": TEST_SIZE}))  # auto_map kept
    return folder


@pytest.fixture(scope="module")
def model(folder):
    return paca_hf.PaCaViTMaskRCNNForInstanceSegmentation.from_pretrained(folder).eval()


def photo(index, height, width):
    """One of the package's generated scenes (textured shapes on a textured background)."""
    return Image.fromarray(scene_arrays(index, (height, width))[0])


def run_logging_errors(function):
    errors = ErrorRecorder()
    loggers = [logging.getLogger(), transformers_logging.get_logger("transformers")]
    for logger in loggers:
        logger.addHandler(errors)
    try:
        return function(), errors.messages
    finally:
        for logger in loggers:
            logger.removeHandler(errors)


def by_hand(model, images, processor, post_process, **kwargs):
    """The processor, the model and the post-processing on `images` as one batch, each result at its image's size."""
    with torch.no_grad():
        outputs = model(**processor(images, return_tensors="pt"))
    sizes = [(image.height, image.width) for image in images]
    return getattr(processor, post_process)(outputs, threshold=THRESHOLD, target_sizes=sizes, **kwargs)


def expected_detections(result, id2label):
    return [
        {"score": score, "label": id2label[label], "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), box))}
        for score, label, box in zip(
            result["scores"].tolist(), result["labels"].tolist(), result["boxes"].int().tolist()
        )
    ]


def expected_instances(result):
    segmentation = result["segmentation"].numpy()
    return [(info["label_id"], info["score"], segmentation == info["id"]) for info in result["segments_info"]]


def assert_same_instances(found, expected, id2label):
    assert len(found) == len(expected) > 0
    for instance, (label_id, score, mask) in zip(found, expected):
        assert instance["label"] == id2label[label_id] and instance["score"] == score
        assert np.array_equal(np.array(instance["mask"]) > 0, mask)


def test_object_detection_pipeline(folder, model):
    image = photo(0, 96, 128)
    detector, errors = run_logging_errors(lambda: pipeline("object-detection", model=str(folder), device="cpu"))
    assert type(detector.model) is paca_hf.PaCaViTMaskRCNNForInstanceSegmentation
    assert type(detector.image_processor) is PaCaViTMaskRCNNImageProcessor
    found, more_errors = run_logging_errors(lambda: detector(image, threshold=THRESHOLD))
    assert errors + more_errors == []  # transformers' "model not supported for object-detection" included
    expected = by_hand(model, [image], detector.image_processor, "post_process_object_detection")[0]
    assert len(found) > 0 and found == expected_detections(expected, model.config.id2label)
    assert all(0 <= d["box"]["xmin"] <= d["box"]["xmax"] <= 128 and d["box"]["ymax"] <= 96 for d in found)


def test_instance_segmentation_pipeline(folder, model):
    image = photo(1, 72, 160)
    segmenter, errors = run_logging_errors(
        lambda: pipeline("image-segmentation", model=str(folder), subtask="instance", device="cpu")
    )
    found, more_errors = run_logging_errors(lambda: segmenter(image, threshold=THRESHOLD))
    assert errors + more_errors == []
    expected = by_hand(model, [image], segmenter.image_processor, "post_process_instance_segmentation")[0]
    assert_same_instances(found, expected_instances(expected), model.config.id2label)
    masks = np.stack([np.array(instance["mask"]) > 0 for instance in found])
    assert masks.shape[1:] == (72, 160) and masks.sum(axis=0).max() == 1  # one instance per pixel


def test_pipelines_batch_images_of_one_size(folder, model):
    images = [photo(2, 96, 128), photo(3, 96, 128)]
    detector = pipeline("object-detection", model=str(folder), device="cpu")
    found = detector(images, threshold=THRESHOLD, batch_size=2)
    expected = by_hand(model, images, detector.image_processor, "post_process_object_detection")
    assert found == [expected_detections(result, model.config.id2label) for result in expected]
    segmenter = pipeline("image-segmentation", model=str(folder), subtask="instance", device="cpu")
    found = segmenter(images, threshold=THRESHOLD, batch_size=2)
    expected = by_hand(model, images, segmenter.image_processor, "post_process_instance_segmentation")
    for instances, result in zip(found, expected):
        assert_same_instances(instances, expected_instances(result), model.config.id2label)


def test_pipelines_batch_images_of_different_sizes_with_a_fixed_pad_size(folder, model):
    """transformers' pipeline collate concatenates each image's `pixel_values` as they are, so images of different
    sizes form a batch only when the processor pads every one to the same `pad_size` (README)."""
    images = [photo(4, 96, 128), photo(5, 72, 160)]  # resized to 160 x 213 and 115 x 256
    detector = pipeline("object-detection", model=str(folder), device="cpu")
    with pytest.raises(RuntimeError):
        detector(images, threshold=THRESHOLD, batch_size=2)
    padded = PaCaViTMaskRCNNImageProcessor(size=TEST_SIZE, pad_size={"height": 160, "width": 256})
    detector = pipeline("object-detection", model=str(folder), image_processor=padded, device="cpu")
    found = detector(images, threshold=THRESHOLD, batch_size=2)
    expected = by_hand(model, images, padded, "post_process_object_detection")
    assert found == [expected_detections(result, model.config.id2label) for result in expected]
    assert all(len(detections) > 0 for detections in found)


_REMOTE_PIPELINES = (
    REMOTE_SCRIPT_PROLOGUE
    + """image = Image.open(sys.argv[2])
detector = pipeline("object-detection", model=sys.argv[1], trust_remote_code=True, device="cpu")
segmenter = pipeline("image-segmentation", model=sys.argv[1], subtask="instance", trust_remote_code=True, device="cpu")
for run in (detector, segmenter):
    assert type(run.model).__module__.startswith("transformers_modules."), type(run.model)
    assert type(run.image_processor).__module__.startswith("transformers_modules."), type(run.image_processor)
print("DETECTIONS:", len(detector(image, threshold=0.1)))
print("INSTANCES:", len(segmenter(image, threshold=0.1)))
print("ERRORS:", errors.messages)
"""
)


def test_pipelines_run_the_repos_remote_code_without_paca_hf(folder, model, tmp_path):
    """The converted repo loaded with `trust_remote_code=True` where paca_hf cannot be imported: both pipelines run
    the repo's own classes, find what the installed classes find, and log no error."""
    image = photo(6, 96, 128)
    image.save(tmp_path / "photo.png")
    env = hidden_package_environment(tmp_path / "sandbox")
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", _REMOTE_PIPELINES, str(folder), str(tmp_path / "photo.png")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    processor = PaCaViTMaskRCNNImageProcessor(size=TEST_SIZE)
    detections = by_hand(model, [image], processor, "post_process_object_detection")[0]
    instances = by_hand(model, [image], processor, "post_process_instance_segmentation")[0]
    assert f"DETECTIONS: {len(detections['scores'])}\n" in result.stdout
    assert f"INSTANCES: {len(instances['segments_info'])}\n" in result.stdout
    assert "ERRORS: []" in result.stdout, result.stdout[-2000:]
