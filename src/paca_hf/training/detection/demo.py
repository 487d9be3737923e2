"""The detection demo (`python scripts/demo.py --task detection`, `make demo-detection`): a small PaCa-ViT Mask R-CNN
trained from scratch on the built-in instance scenes (`paca_hf.data.scenes`, as COCO folders) with the COCO fine-tune
(`.finetune`), box and mask AP on held-out scenes with pycocotools, `pipeline("object-detection")` on held-out scenes
and a picture of image, truth and predictions.

The model, data and schedule are chosen so that the whole path runs in minutes on a CPU and visibly learns; the
numbers say nothing about PaCa-ViT on COCO.
"""

import numpy as np

from ...visualization import load_font
from ..runner import default_threads as default_threads  # public here: scripts/demo.py, scripts/benchmark_demo.py
from ..runner import run_demo_finetune
from . import finetune


# A narrow PaCa-Tiny-shaped backbone (4 stages, clusters in stages 1-3) under small Mask R-CNN heads. The scenes'
# shapes are 20-50 px across at 128 px: anchors of scale 4 (16 px at stride 4 .. 256 px at stride 64) fit them better
# than mmdetection's 8; fewer proposals and RoI samples than COCO needs keep a step cheap.
DEMO_DETECTOR = {
    "model_type": "pacavit_mask_rcnn",
    "backbone_config": {
        "hidden_sizes": [24, 48, 96, 128],
        "depths": [1, 1, 1, 1],
        "num_attention_heads": [1, 2, 3, 4],
        "mlp_ratios": [4, 4, 4, 4],
        "num_clusters": [8, 8, 8, 0],
        "clustering_kernel_size": 7,
        "drop_path_rate": 0.0,
    },
    "fpn_hidden_size": 48,
    "rpn_hidden_size": 48,
    "anchor_scales": [4],
    "rpn_pre_nms_top_n_train": 500,
    "rpn_post_nms_top_n_train": 200,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 100,
    "rpn_batch_size_per_image": 128,
    "roi_batch_size_per_image": 64,
    "box_head_hidden_size": 128,
    "mask_head_hidden_size": 32,
    "num_mask_head_convs": 2,
    "detections_per_image": 20,
}
# From scratch on toy data: lr 1e-3 (the recipe's 1e-4 is for fine-tuning an ImageNet backbone), scenes at their own
# size (short edges 112-144 for the multi-scale training, 128 at test), the recipe's steps at 8/12 and 11/12.
DEMO_SETTINGS = {
    "image_size": 128,
    "num_train_images": 200,
    "num_eval_images": 50,
    "num_train_epochs": 12,
    "num_warmup_steps": 50,
    "learning_rate": 1e-3,
    "per_device_train_batch_size": 4,
    "train_short_edges": "112,128,144",
    "resize_scale": "256,128",
    "detr_crop_prob": 0.0,  # DETR's crops of 384-600 px are for COCO's images, not for 128 px scenes
}


def finetune_argv(output_dir, config_path, seed=0, settings=None) -> list:
    """The COCO fine-tune's command line for the demo: `DEMO_SETTINGS` updated with `settings`, on the CPU."""
    s = dict(DEMO_SETTINGS, **(settings or {}))
    argv = [
        "--config_name",
        str(config_path),
        "--dataset_name",
        "builtin-scenes",
        "--builtin_image_size",
        str(s["image_size"]),
        "--num_train_images",
        str(s["num_train_images"]),
        "--num_eval_images",
        str(s["num_eval_images"]),
        "--num_warmup_steps",
        str(s["num_warmup_steps"]),
        "--learning_rate",
        str(s["learning_rate"]),
        "--per_device_train_batch_size",
        str(s["per_device_train_batch_size"]),
        "--train_short_edges",
        str(s["train_short_edges"]),
        "--resize_scale",
        str(s["resize_scale"]),
        "--detr_crop_prob",
        str(s["detr_crop_prob"]),
        "--per_device_eval_batch_size",
        "10",
        "--logging_steps",
        str(s.get("logging_steps", 50)),
        "--output_dir",
        str(output_dir),
        "--seed",
        str(seed),
        "--mixed_precision",
        "no",
        "--cpu",
    ]
    if s.get("max_train_steps") is not None:
        argv += ["--max_train_steps", str(s["max_train_steps"])]
    else:
        argv += ["--num_train_epochs", str(s["num_train_epochs"])]
    return argv


def run_finetune(output_dir, seed=0, settings=None, threads=None, quiet=False) -> tuple:
    """`(results, minutes)` of one demo training run into `output_dir`."""
    return run_demo_finetune(
        finetune.main,
        output_dir,
        DEMO_DETECTOR,
        "demo_detector_config.json",
        lambda folder, config_path: finetune_argv(folder, config_path, seed, settings),
        threads,
        quiet,
    )


# ------------------------------------------------------------------------------------------------ picture


COLOURS = [(230, 60, 60), (60, 180, 75), (70, 110, 235), (250, 200, 40), (200, 70, 220), (70, 210, 210)]


def _draw_instances(image: np.ndarray, instances: list[dict], scale: int, font):
    """`image` (H, W, 3) uint8 enlarged `scale` times, each instance's mask tinted in its class colour and its box
    outlined, with `label` (and `score`) written above it."""
    from PIL import Image, ImageDraw

    canvas = np.repeat(np.repeat(image.astype(np.float32), scale, 0), scale, 1)
    for instance in instances:
        if instance.get("mask") is not None:
            mask = np.repeat(np.repeat(np.asarray(instance["mask"], dtype=bool), scale, 0), scale, 1)
            colour = np.array(COLOURS[instance["label_id"] % len(COLOURS)], dtype=np.float32)
            canvas[mask] = 0.5 * canvas[mask] + 0.5 * colour
    picture = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for instance in instances:
        colour = COLOURS[instance["label_id"] % len(COLOURS)]
        x1, y1, x2, y2 = (float(value) * scale for value in instance["box"])
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
        text = instance["label"] + (f" {instance['score']:.2f}" if instance.get("score") is not None else "")
        draw.text((x1 + 2, max(y1 - 12, 0)), text, fill=colour, font=font)
    return picture


def render_detections(images, truths, predictions, header: list[str], scale: int = 3):
    """A picture: the header lines, then one row per scene: the image, its truth (boxes and masks), the predictions
    (boxes with label and score, masks). `truths` / `predictions`: lists of instances (`box` x1, y1, x2, y2,
    `label_id`, `label`, `mask` (H, W) bool or None, `score` for predictions)."""
    from PIL import Image, ImageDraw

    font = load_font(11)
    tiles = [
        [
            _draw_instances(image, [], scale, font),
            _draw_instances(image, truth, scale, font),
            _draw_instances(image, prediction, scale, font),
        ]
        for image, truth, prediction in zip(images, truths, predictions)
    ]
    width, height = tiles[0][0].size
    gap, top = 6, 16 * (len(header) + 1) + 18
    picture = Image.new("RGB", (3 * width + 4 * gap, top + len(tiles) * (height + gap) + gap), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    for line, text in enumerate(header):
        draw.text((gap, gap + 16 * line), text, fill=(0, 0, 0), font=font)
    for column, title in enumerate(("image", "truth", "pipeline('object-detection') + masks")):
        draw.text((gap + column * (width + gap), top - 16), title, fill=(0, 0, 0), font=font)
    for row, row_tiles in enumerate(tiles):
        for column, tile in enumerate(row_tiles):
            picture.paste(tile, (gap + column * (width + gap), top + row * (height + gap)))
    return picture


def scene_truths(annotations_path, image_ids) -> list[list[dict]]:
    """The instances of held-out scenes from their COCO file (boxes, labels, masks)."""
    from .evaluation import load_coco_annotations

    coco = load_coco_annotations(annotations_path)
    names = {category["id"]: category["name"] for category in coco.dataset["categories"]}
    truths = []
    for image_id in image_ids:
        instances = []
        for annotation in coco.imgToAnns.get(image_id, []):
            x, y, w, h = annotation["bbox"]
            instances.append(
                {
                    "box": (x, y, x + w, y + h),
                    "label_id": annotation["category_id"] - 1,
                    "label": names[annotation["category_id"]],
                    "mask": coco.annToMask(annotation) > 0,
                }
            )
        truths.append(instances)
    return truths


def pipeline_predictions(model_dir, image_paths, threshold: float = 0.5) -> list[list[dict]]:
    """`pipeline("object-detection")` of the saved model on the images (boxes, labels, scores), each detection
    given its mask from the processor's instance post-processing (`return_binary_maps`; matched by label and
    score, in the order both keep)."""
    import torch
    from PIL import Image
    from transformers import AutoModelForInstanceSegmentation, pipeline

    from ...loading import load_image_processor

    detector = pipeline("object-detection", model=str(model_dir), threshold=threshold)
    model = AutoModelForInstanceSegmentation.from_pretrained(model_dir).eval()
    processor = load_image_processor(str(model_dir), task="instance-segmentation")
    label2id = {name: int(index) for name, index in model.config.label2id.items()}
    results = []
    for path in image_paths:
        image = Image.open(path).convert("RGB")
        detections = detector(image)
        inputs = processor(image, return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        size = [(image.height, image.width)]
        segmented = processor.post_process_instance_segmentation(
            outputs, threshold=threshold, target_sizes=size, return_binary_maps=True
        )[0]
        masks = {
            (int(info["label_id"]), round(float(info["score"]), 4)): segmented["segmentation"][info["id"]]
            for info in segmented["segments_info"]
        }
        instances = []
        for detection in detections:
            box = detection["box"]
            label_id = label2id[detection["label"]]
            mask = masks.get((label_id, round(float(detection["score"]), 4)))
            instances.append(
                {
                    "box": (box["xmin"], box["ymin"], box["xmax"], box["ymax"]),
                    "label_id": label_id,
                    "label": detection["label"],
                    "score": float(detection["score"]),
                    "mask": None if mask is None else mask.numpy().astype(bool),
                }
            )
        results.append(instances)
    return results
