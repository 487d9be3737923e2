"""scripts/evaluate_coco.py (its `main`) end to end: a tiny random PaCa-ViT Mask R-CNN saved with its image processor, scored on a
COCO folder of built-in scenes; its figures are pycocotools' own on the predictions it writes; bad input is one
`error:` line and exit status 2."""

import json
from pathlib import Path

import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tiny_configs import tiny_config

from paca_hf import PaCaViTMaskRCNNConfig, PaCaViTMaskRCNNForInstanceSegmentation
from paca_hf.data.scenes import id2label, save_coco_scenes
from paca_hf.image_processing_pacavit_mask_rcnn import PaCaViTMaskRCNNImageProcessor
from paca_hf.training.detection.evaluation import main


pytestmark = pytest.mark.usefixtures("one_thread")


def _detector_folder(folder, names):
    torch.manual_seed(0)
    config = PaCaViTMaskRCNNConfig(
        backbone_config=tiny_config(),
        fpn_hidden_size=16,
        rpn_hidden_size=16,
        box_head_hidden_size=32,
        mask_head_hidden_size=16,
        num_mask_head_convs=2,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={name: index for index, name in enumerate(names)},
    )
    PaCaViTMaskRCNNForInstanceSegmentation(config).save_pretrained(folder)
    PaCaViTMaskRCNNImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    return _detector_folder(tmp_path_factory.mktemp("detector"), list(id2label().values()))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return Path(save_coco_scenes(tmp_path_factory.mktemp("coco") / "scenes", num_images=3, image_size=(48, 64)))


def _pycocotools_scores(annotations, predictions, iou_type):
    """COCOeval run directly on the written predictions (each type scoring only its own field, as COCO's own
    evaluation of separate bbox / segm result files does)."""
    gt = COCO(str(annotations))
    results = json.loads(Path(predictions).read_text())
    dropped = "segmentation" if iou_type == "bbox" else "bbox"
    evaluator = COCOeval(gt, gt.loadRes([{k: v for k, v in r.items() if k != dropped} for r in results]), iou_type)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats[:6].tolist()


def test_the_script_scores_a_detector_as_pycocotools_does(detector, scenes, tmp_path, capsys):
    output, predictions = tmp_path / "results.json", tmp_path / "predictions.json"
    argv = [
        "--model", str(detector), "--annotations", str(scenes / "instances.json"), "--images", str(scenes / "images"),
        "--output", str(output), "--predictions", str(predictions), "--batch-size", "2",
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    scores = json.loads(output.read_text())
    assert json.loads(printed) == scores  # what it prints is what it writes
    results = json.loads(predictions.read_text())
    assert results, "a random detector still detects something at score > 0.05"
    assert {r["image_id"] for r in results} <= {0, 1, 2}
    assert {r["category_id"] for r in results} <= set(range(1, 6))
    assert all(isinstance(r["segmentation"]["counts"], str) for r in results)
    for iou_type in ("bbox", "segm"):
        expected = _pycocotools_scores(scenes / "instances.json", predictions, iou_type)
        assert [scores[iou_type][k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")] == pytest.approx(expected)

    # A random detector scores 0 on the scenes. Against annotations made of its own detections (the same images,
    # categories matched by name again), every detection finds itself: AP 1, through the whole chain once more.
    truth = json.loads((scenes / "instances.json").read_text())
    truth["annotations"] = [
        {**r, "id": n, "area": float(mask_utils.area(r["segmentation"])), "iscrowd": 0}
        for n, r in enumerate(results, start=1)
        if mask_utils.area(r["segmentation"]) > 0
    ]
    assert len(truth["annotations"]) == len(results)  # no empty mask: each is matched by its own
    (tmp_path / "truth.json").write_text(json.dumps(truth))
    argv[argv.index("--annotations") + 1] = str(tmp_path / "truth.json")
    assert main(argv) == 0
    for iou_type in ("bbox", "segm"):
        assert json.loads(output.read_text())[iou_type]["AP"] == pytest.approx(1.0, abs=1e-12)


def test_bad_input_is_one_error_line_and_exit_status_2(detector, scenes, tmp_path, capsys):
    args = ["--model", str(detector), "--annotations", str(scenes / "instances.json"), "--disable-progress"]
    (tmp_path / "images").mkdir()
    assert main([*args, "--images", str(tmp_path / "images")]) == 2
    assert "error: images of the annotations are missing" in capsys.readouterr().err

    other = _detector_folder(tmp_path / "other", ["disc", "square", "hexagon"])
    assert main(["--model", str(other), *args[2:], "--images", str(scenes / "images")]) == 2
    assert "'hexagon'" in capsys.readouterr().err

    broken = json.loads((scenes / "instances.json").read_text())
    broken["annotations"][0]["bbox"][0] = 60.0  # past the 64 px wide image
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    assert (
        main(
            [
                "--model",
                str(detector),
                "--annotations",
                str(tmp_path / "broken.json"),
                "--images",
                str(scenes / "images"),
            ]
        )
        == 2
    )
    assert f"annotation {broken['annotations'][0]['id']}: the box" in capsys.readouterr().err
