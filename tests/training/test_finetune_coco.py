"""The COCO fine-tune (`scripts/finetune_coco.py`, `paca_hf.training.detection.finetune`) on tiny detectors and the
built-in instance scenes as COCO folders: its results are pycocotools' scores of the saved model (through
`scripts/evaluate_coco.py`'s evaluation), an interrupted and resumed run equals an uninterrupted one, the
augmentation moves boxes and masks with their image, the recipe's defaults and schedule, bad data named."""

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from finetune_helpers import launch_on_two_cpu_processes, scenes_argv
from safetensors.torch import load_file
from tiny_configs import tiny_config, tiny_detector_config

from paca_hf import PaCaViTForImageClassification, PaCaViTMaskRCNNForInstanceSegmentation
from paca_hf import training as T
from paca_hf.data.scenes import save_coco_scenes
from paca_hf.training.detection import demo, finetune
from paca_hf.training.detection.arguments import parse_args
from paca_hf.training.detection.augmentation import (
    DetectionTrainAugment,
    crop_instances,
    flip_instances,
    resize_instances,
)
from paca_hf.training.detection.evaluation import evaluate_coco_model
from paca_hf.training.detection.model import build_detector
from paca_hf.training.scheduler import MultiStepWithWarmup


ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def detector_config_file(tmp_path_factory):
    """config.json of a tiny detector with drop path on (a resumed run must restore the dropout RNG)."""
    path = tmp_path_factory.mktemp("detector") / "config.json"
    tiny_detector_config({"drop_path_rate": 0.1}).to_json_file(path)
    return path


def coco_args(config, output_dir, *extra, steps=3, train=4, evaluate=2):
    """A few steps of a tiny detector on 64 px built-in scenes, trained at short edges 48 or 64 (half of the time after
    DETR's crop, scaled down: a resize to 64 or 80, a crop of 32-48 px) and evaluated at 64;
    `extra` come last, so they override these."""
    return scenes_argv(
        config,
        output_dir,
        *extra,
        task_flags=[
            "--train_short_edges",
            "48,64",
            "--resize_scale",
            "96,64",
            "--detr_crop_short_edges",
            "64,80",
            "--detr_crop_size",
            "32,48",
        ],
        image_size=64,
        num_train_images=train,
        num_eval_images=evaluate,
        steps=steps,
    )


@pytest.fixture(scope="module")
def trained(detector_config_file, tmp_path_factory):
    """A 3-step run on 4 scenes, evaluated on 2: `(output_dir, results)`."""
    out = tmp_path_factory.mktemp("coco-run") / "run"
    return out, finetune.main(coco_args(detector_config_file, out, steps=3))


def test_a_few_steps_on_scene_folders_report_the_saved_models_coco_scores(trained):
    """all_results.json holds box and mask AP, and they are what `scripts/evaluate_coco.py`'s evaluation
    (pycocotools, the saved model with its saved processor) gives for the saved folder."""
    out, results = trained
    written = json.loads((out / "all_results.json").read_text())
    assert written["train_steps"] == 3 and math.isfinite(written["train_loss"])
    assert set(written["train_losses"]) == {"loss", *finetune.LOSS_NAMES}
    validation = next((out / "builtin-scenes-coco").glob("validation-*"))
    scores = evaluate_coco_model(str(out), validation / "instances.json", validation / "images", disable_progress=True)
    for iou_type in ("bbox", "segm"):
        assert written[iou_type] == pytest.approx(scores[iou_type], abs=1e-12)
        assert written[f"eval_{iou_type}_AP"] == written[iou_type]["AP"]
    assert results["num_eval_images"] == 2 and results["num_train_images"] == 4
    report = json.loads((out / "init_report.json").read_text())
    assert report["source"].startswith("config ") and not report["loaded"]


def test_the_demo_draws_the_object_detection_pipelines_detections_with_their_masks(trained):
    """The demo's picture path on a saved detector: `pipeline("object-detection")`'s detections, each with the mask
    the processor's instance post-processing gives it; the picture has the three columns."""
    from transformers import pipeline

    out, _ = trained
    validation = next((out / "builtin-scenes-coco").glob("validation-*"))
    paths = sorted((validation / "images").glob("*.png"))
    predictions = demo.pipeline_predictions(out, paths, threshold=0.0)
    expected = pipeline("object-detection", model=str(out), threshold=0.0)([str(path) for path in paths])
    assert [len(instances) for instances in predictions] == [len(found) for found in expected]
    assert sum(map(len, predictions)) > 0
    for instances, found in zip(predictions, expected):
        assert [i["label"] for i in instances] == [f["label"] for f in found]
        assert all(i["mask"] is not None and i["mask"].shape == (64, 64) for i in instances)
    image_ids = [int(path.stem) for path in paths]
    truths = demo.scene_truths(validation / "instances.json", image_ids)
    images = [np.zeros((64, 64, 3), dtype=np.uint8)] * len(paths)
    picture = demo.render_detections(images, truths, predictions, ["a header line"], scale=2)
    assert picture.width == 3 * 128 + 4 * 6 and picture.height > len(paths) * 128
    args = finetune.parse_args(demo.finetune_argv(out, out / "config.json", seed=1))
    assert args.dataset_name == "builtin-scenes" and args.seed == 1 and args.max_train_steps is None
    assert args.num_train_epochs == 12 and args.lr_decay_epochs == [8, 11]


def read_weights(folder):
    return load_file(str(Path(folder) / "model.safetensors"))


def test_interrupted_and_resumed_equals_uninterrupted(detector_config_file, tmp_path):
    """Drop path, the RPN / RoI samplers' draws, flips and scales, accumulation over an epoch boundary: a run
    stopped after step 2 and resumed from its checkpoint ends with the same weights, bit for bit, and the same
    scores as one that ran through."""
    extra = ("--checkpointing_steps", "2", "--gradient_accumulation_steps", "2", "--per_device_train_batch_size", "1")
    straight = finetune.main(coco_args(detector_config_file, tmp_path / "straight", *extra, steps=4, train=3))
    stopped = finetune.main(
        coco_args(detector_config_file, tmp_path / "resumed", *extra, "--stop_after_step", "2", steps=4, train=3)
    )
    assert stopped["stopped_at_step"] == 2 and stopped["latest_checkpoint_step"] == 2
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    resumed = finetune.main(
        coco_args(
            detector_config_file, tmp_path / "resumed", *extra, "--resume_from_checkpoint", "latest", steps=4, train=3
        )
    )
    assert resumed["resumed_from"].endswith("step_2")
    expected, actual = read_weights(tmp_path / "straight"), read_weights(tmp_path / "resumed")
    assert expected.keys() == actual.keys()
    different = [name for name in expected if not torch.equal(expected[name], actual[name])]
    assert not different, different[:5]
    assert resumed["bbox"] == straight["bbox"] and resumed["segm"] == straight["segm"]
    # 3 images, 1 per batch, 2 batches per step: step 2 ends inside epoch 1, so the resume skipped a batch.
    marker = json.loads((tmp_path / "resumed" / "step_4" / T.COMPLETE_MARKER).read_text())
    assert marker["step"] == 4 and marker["epoch"] == 2 and marker["batches_in_epoch"] == 2


def test_flip_and_resize_move_boxes_and_masks_with_the_image():
    """Hand-checked: a 4 x 6 image with one object covering rows 1-2 and columns 1-2 (box x1, y1, x2, y2 = 1, 1, 3,
    3 in pixel edges). Flipped: columns 3-4, box 3, 1, 5, 3. Then doubled to 8 x 12: rows 2-5, columns 6-9, box 6,
    2, 10, 6; the image's marked pixels follow."""
    image = torch.zeros(3, 4, 6)
    image[:, 1:3, 1:3] = 255.0
    masks = torch.zeros(1, 4, 6, dtype=torch.bool)
    masks[0, 1:3, 1:3] = True
    boxes = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    image, boxes, masks = flip_instances(image, boxes, masks)
    assert boxes.tolist() == [[3.0, 1.0, 5.0, 3.0]]
    assert masks[0].nonzero().tolist() == [[1, 3], [1, 4], [2, 3], [2, 4]]
    image, boxes, masks = resize_instances(image, boxes, masks, (8, 12))
    assert boxes.tolist() == [[6.0, 2.0, 10.0, 6.0]]
    expected = torch.zeros(8, 12, dtype=torch.bool)
    expected[2:6, 6:10] = True
    assert torch.equal(masks[0], expected)
    assert (image[0, 3:5, 7:9] == 255).all() and (image[0, :, :5] == 0).all()

    # The whole augmentation: a flip always, short edge 8 of a 4 x 6 image (long edge capped at 100): x2; the batch
    # padded to 32, normalised with the detector processor's mean / std (0 in the padding).
    augment = DetectionTrainAugment(
        short_edges=[8], long_edge=100, flip_prob=1.0, image_mean=(0, 0, 0), image_std=(1, 1, 1)
    )
    batch = {
        "images": [torch.full((3, 4, 6), 7, dtype=torch.uint8)],
        "boxes": [torch.tensor([[1.0, 1.0, 3.0, 3.0]])],
        "class_labels": [torch.tensor([2])],
        "masks": [torch.zeros(1, 4, 6, dtype=torch.bool)],
    }
    pixel_values, sizes, labels = augment(batch, generator=torch.Generator().manual_seed(0))
    assert pixel_values.shape == (1, 3, 32, 32) and sizes.tolist() == [[8, 12]]
    assert (pixel_values[0, :, :8, :12] == 7).all() and (pixel_values[0, :, 8:] == 0).all()
    assert labels[0]["boxes"].tolist() == [[6.0, 2.0, 10.0, 6.0]] and labels[0]["class_labels"].tolist() == [2]


def test_a_crop_keeps_the_instances_it_cuts_and_drops_those_it_misses():
    """Hand-checked: an 8 x 8 image with object A at rows 1-2, columns 1-2 (box 1, 1, 3, 3) and object B at rows 5-6,
    columns 5-6 (box 5, 5, 7, 7). The crop of rows 2-5 and columns 2-5 (top 2, left 2, 4 x 4) keeps A's corner
    (box 0, 0, 1, 1, one pixel) and B's (box 3, 3, 4, 4, one pixel); a crop of rows 0-3 and columns 0-3 drops B."""
    image = torch.arange(64, dtype=torch.float32).reshape(1, 8, 8).expand(3, 8, 8)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 1:3, 1:3] = True
    masks[1, 5:7, 5:7] = True
    boxes = torch.tensor([[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 7.0, 7.0]])
    classes = torch.tensor([3, 4])
    cropped, kept_boxes, kept_masks, kept_classes = crop_instances(image, boxes, masks, classes, 2, 2, 4, 4)
    assert cropped.shape == (3, 4, 4) and cropped[0, 0, 0] == 2 * 8 + 2
    assert kept_boxes.tolist() == [[0.0, 0.0, 1.0, 1.0], [3.0, 3.0, 4.0, 4.0]] and kept_classes.tolist() == [3, 4]
    assert kept_masks[0].nonzero().tolist() == [[0, 0]] and kept_masks[1].nonzero().tolist() == [[3, 3]]
    _, kept_boxes, kept_masks, kept_classes = crop_instances(image, boxes, masks, classes, 0, 0, 4, 4)
    assert kept_boxes.tolist() == [[1.0, 1.0, 3.0, 3.0]] and kept_classes.tolist() == [3]
    assert kept_masks.shape == (1, 4, 4) and kept_masks[0].sum() == 4


def test_the_defaults_are_the_authors_1x_recipe_and_schedule(tmp_path):
    """mmdetection's schedule_1x (12 epochs, x0.1 at epochs 8 and 11, 500 warm-up iterations from 0.001) with the
    authors' AdamW 1e-4 / 0.05 and multi-scale 480-800 (every 32) at most 1333, flip 0.5, test scale (1333, 800)."""
    args = parse_args(
        [
            "--config_name",
            "pacavit_tiny_p2cconv_100_0",
            "--dataset_name",
            "builtin-scenes",
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert (args.learning_rate, args.weight_decay, args.norm_decay_mult) == (1e-4, 0.05, 0.0)
    assert (args.num_train_epochs, args.lr_decay_epochs, args.lr_decay_factor) == (12, [8, 11], 0.1)
    assert (args.num_warmup_steps, args.warmup_start_factor) == (500, 0.001)
    assert args.train_short_edges == [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]
    assert (args.resize_scale, args.flip_prob, args.per_device_train_batch_size) == ((1333, 800), 0.5, 2)
    assert (args.detr_crop_prob, args.detr_crop_short_edges, args.detr_crop_size) == (0.5, [400, 500, 600], (384, 600))
    schedule = MultiStepWithWarmup(500, [800, 1100], 0.001, 0.1)  # 100 steps per epoch
    assert schedule(0) == pytest.approx(0.001)
    assert schedule(250) == pytest.approx(0.001 + 0.999 * 0.5)
    assert schedule(500) == schedule(799) == 1.0
    assert schedule(800) == pytest.approx(0.1) and schedule(1099) == pytest.approx(0.1)
    assert schedule(1100) == pytest.approx(0.01)
    # 12 epochs of 100 steps: steps 800 and 1100; a 60-step run (--max_train_steps): the same fractions, 40 and 55.
    assert finetune.lr_milestones([8, 11], 12, 100) == [800, 1100]
    assert finetune.lr_milestones([8, 11], 12, 100, max_train_steps=60) == [40, 55]
    # Warm-up and steps multiply (mmengine composes its schedulers): a milestone inside the warm-up.
    assert MultiStepWithWarmup(10, [5], 0.5, 0.1)(5) == pytest.approx((0.5 + 0.5 * 5 / 10) * 0.1)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dataset_name", "builtin-scenes", "--train_images", "x"], "exclude each other"),
        (["--train_annotations", "a.json"], "missing --train_images, --validation_annotations, --validation_images"),
        (["--dataset_name", "coco"], "--dataset_name takes only 'builtin-scenes'"),
        (["--dataset_name", "builtin-scenes", "--flip_prob", "2"], "--flip_prob must be in [0, 1]"),
    ],
)
def test_bad_flags_are_usage_errors(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        parse_args(["--config_name", "x", "--output_dir", str(tmp_path), *flags])
    assert error.value.code == 2 and message in capsys.readouterr().err


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return Path(save_coco_scenes(tmp_path_factory.mktemp("coco") / "scenes", num_images=3, image_size=(64, 64)))


def _edited_copy(scenes, tmp_path, edit):
    folder = tmp_path / "edited"
    shutil.copytree(scenes, folder)
    dataset = json.loads((folder / "instances.json").read_text())
    edit(dataset, folder)
    (folder / "instances.json").write_text(json.dumps(dataset))
    return folder


def _coco_run(config, folder, out, *extra):
    return finetune.cli(
        [
            "--config_name",
            str(config),
            "--train_annotations",
            str(folder / "instances.json"),
            "--train_images",
            str(folder / "images"),
            "--validation_annotations",
            str(folder / "instances.json"),
            "--validation_images",
            str(folder / "images"),
            "--train_short_edges",
            "64",
            "--resize_scale",
            "96,64",
            "--max_train_steps",
            "1",
            "--num_warmup_steps",
            "0",
            "--per_device_train_batch_size",
            "1",
            "--output_dir",
            str(out),
            "--disable_tqdm",
            *extra,
        ]
    )


def _unknown_category(dataset, folder):
    dataset["annotations"][1]["category_id"] = 99


def _box_outside(dataset, folder):
    dataset["annotations"][0]["bbox"] = [50, 10, 30, 10]


def _flat_polygon(dataset, folder):
    dataset["annotations"][2]["segmentation"] = [[1, 1, 5, 1, 9, 1]]


def _missing_image(dataset, folder):
    (folder / "images" / dataset["images"][1]["file_name"]).unlink()


@pytest.mark.parametrize(
    "edit, named",
    [
        (_unknown_category, "annotation 2: category_id 99"),
        (_box_outside, "annotation 1"),
        (_flat_polygon, "annotation 3"),
        (_missing_image, "000001.png (image 1)"),
    ],
)
def test_bad_annotations_and_missing_images_are_one_error_naming_them(
    detector_config_file, scenes, tmp_path, edit, named, caplog
):
    folder = _edited_copy(scenes, tmp_path, edit)
    with caplog.at_level("ERROR"):
        assert _coco_run(detector_config_file, folder, tmp_path / "out") == 1
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and named in errors[0], errors
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_validation_categories_that_miss_a_trained_class_stop_the_run_before_training(
    detector_config_file, scenes, tmp_path, caplog
):
    def rename(dataset, folder):
        dataset["categories"][0]["name"] = "blob"

    validation = _edited_copy(scenes, tmp_path, rename)
    argv = [
        "--config_name",
        str(detector_config_file),
        "--train_annotations",
        str(scenes / "instances.json"),
        "--train_images",
        str(scenes / "images"),
        "--validation_annotations",
        str(validation / "instances.json"),
        "--validation_images",
        str(validation / "images"),
        "--output_dir",
        str(tmp_path / "out"),
        "--disable_tqdm",
    ]
    with caplog.at_level("INFO"):
        assert finetune.cli(argv) == 1
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and str(validation / "instances.json") in errors[0] and "'disc'" in errors[0], errors
    assert not re.search(r"step \d+/\d+", caplog.text)  # stopped before the first step


def test_crowd_annotations_are_left_out_and_empty_images_skipped_and_counted(
    detector_config_file, scenes, tmp_path, caplog
):
    """Image 1 loses its annotations (skipped, as mmdetection's filter_empty_gt), image 2's are all crowd (left out of
    the targets, so that image is skipped too): one training image is left, and the log counts both."""

    def edit(dataset, folder):
        dataset["annotations"] = [a for a in dataset["annotations"] if a["image_id"] != 1]
        for annotation in dataset["annotations"]:
            annotation["iscrowd"] = int(annotation["image_id"] == 2)

    folder = _edited_copy(scenes, tmp_path, edit)
    crowd = sum(a["image_id"] == 2 for a in json.loads((folder / "instances.json").read_text())["annotations"])
    with caplog.at_level("INFO"):
        assert _coco_run(detector_config_file, folder, tmp_path / "out") == 0
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert results["num_train_images"] == 1 and results["num_skipped_train_images"] == 2
    assert f"skipped 2 image(s) without annotations (ids 1, 2); {crowd} crowd annotation(s) left out" in caplog.text


def test_a_classifier_gives_the_backbone_and_the_heads_start_new(tmp_path):
    """From a converted ImageNet classifier: every backbone tensor is the classifier's, the rest is new (reported)."""
    torch.manual_seed(0)
    classifier = PaCaViTForImageClassification(tiny_config(num_labels=7))
    classifier.save_pretrained(tmp_path / "classifier")
    model, report = build_detector({0: "a", 1: "b"}, model_name_or_path=str(tmp_path / "classifier"))
    source = classifier.pacavit.state_dict()
    backbone = model.backbone.state_dict()
    assert source.keys() == backbone.keys()
    assert all(torch.equal(source[name], backbone[name]) for name in source)
    assert sorted(report.loaded) == sorted(f"backbone.{name}" for name in source)
    assert report.newly_initialized and all(not name.startswith("backbone.") for name in report.newly_initialized)
    assert model.config.id2label == {0: "a", 1: "b"}


def test_two_processes_on_the_cpu_hold_identical_weights_and_write_once(detector_config_file, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 scripts/finetune_coco.py` on a machine without GPUs: gloo on
    the CPU, both processes end with the same weights, which are the saved model's, and the results count both."""
    out = tmp_path / "ddp"
    args = coco_args(detector_config_file, out, "--debug_dump_weights", steps=2)
    status, log = launch_on_two_cpu_processes(ROOT / "scripts" / "finetune_coco.py", args, ROOT)
    assert status == 0, log[-4000:]
    ranks = [json.loads((out / "rank_checksums" / f"rank_{i}.json").read_text()) for i in range(2)]
    assert all("MULTI_CPU" in r["distributed_type"] for r in ranks)
    assert ranks[0]["checksums"] == ranks[1]["checksums"]
    results = json.loads((out / "all_results.json").read_text())
    assert results["num_processes"] == 2 and results["effective_batch_size"] == 4
    assert set(results["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    saved = T.weight_checksums(PaCaViTMaskRCNNForInstanceSegmentation.from_pretrained(out))
    assert saved == ranks[0]["checksums"]


def _logged_losses(caplog) -> list[float]:
    # From the text formatted when logged (a record of `accelerator.state` cannot be formatted after the run).
    return [float(value) for value in re.findall(r"step \d+/\d+  loss ([0-9.]+)", caplog.text)]


def test_the_detection_demo_recipe_learns_in_a_short_run(tmp_path, caplog):
    """The demo's model and settings (`detection.demo`), shortened to 30 steps on 8 scenes of 64 px: the mean loss
    of the last 10 steps is clearly below that of the first 10 (a run whose updates do nothing, e.g. a learning rate
    that never leaves 0 or gradients not applied, stays at its start)."""
    settings = {
        "max_train_steps": 30,
        "num_train_images": 8,
        "num_eval_images": 2,
        "image_size": 64,
        "train_short_edges": "64",
        "resize_scale": "128,64",
        "num_warmup_steps": 5,
        "logging_steps": 10,
    }
    with caplog.at_level("INFO", logger="paca_hf.training.detection.finetune"):
        results, _ = demo.run_finetune(tmp_path / "demo", seed=0, settings=settings, threads=1, quiet=True)
    losses = _logged_losses(caplog)
    assert len(losses) == 3, losses  # logged every 10 steps
    assert losses[-1] < 0.7 * losses[0], losses
    assert results["train_steps"] == 30 and set(results["segm"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
