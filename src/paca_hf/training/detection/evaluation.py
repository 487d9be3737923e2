"""COCO evaluation of instance predictions through pycocotools (`COCOeval`): box and mask AP, AP50, AP75 and AP of
small / medium / large objects, as every COCO paper reports them.

The scoring is independent of the model: predictions are one dict per image (boxes xyxy in the image's own pixels,
scores, label ids of the model, optionally binary masks), turned into COCO's results format (`bbox` xywh, masks as
compressed RLE from `pycocotools.mask.encode`, `category_id` found through the model's `id2label` BY NAME: COCO's 80
category ids run from 1 to 90 with gaps, they are not the model's 0..79). pycocotools does the IoU, the matching
(crowd annotations included) and the 101-point interpolated AP; nothing of that is computed here.

    >>> coco = load_coco_annotations("instances_val2017.json")
    >>> results = coco_results(predictions, coco, model.config.id2label)
    >>> evaluate_coco_results(coco, results)["bbox"]["AP"]

`scripts/evaluate_coco.py` (`main` below) runs a detector over an image folder and scores it. pycocotools comes with
the `detection` extra (`pip install paca-hf[detection]`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np


logger = logging.getLogger(__name__)

IOU_TYPES = ("bbox", "segm")
# The first six of `COCOeval.stats`, in that order (AP over IoU 0.5:0.95, at 0.5, at 0.75, small / medium / large).
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# How far (pixels) an annotated box may reach past the image's border before the annotation is refused: COCO's boxes
# are computed from float polygons, which may end a rounding error outside.
BOX_TOLERANCE = 1.0


def _pycocotools():
    try:
        from pycocotools import coco, cocoeval, mask
    except ImportError as error:
        raise ImportError(
            "COCO evaluation needs pycocotools: pip install 'paca-hf[detection]' (or pip install pycocotools)"
        ) from error
    return coco, cocoeval, mask


@contextlib.contextmanager
def _quiet():
    """pycocotools prints its progress and its summary: keep them off standard output (the caller logs what counts)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield buffer


# ------------------------------------------------------------------------------------------------ the annotations


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _annotation_problems(annotation: dict, position: int, images: dict, category_ids: set, ids: set) -> list[str]:
    """What is wrong with one entry of `annotations` (an empty list when nothing is), each naming the annotation."""
    annotation_id = annotation.get("id")
    name = f"annotation {annotation_id}" if _is_id(annotation_id) else f"annotation at position {position}"
    if not _is_id(annotation_id) or annotation_id < 1:
        # COCOeval marks matched annotations by id and takes 0 for "unmatched".
        return [f"{name}: 'id' must be a positive integer, got {annotation_id!r}"]
    if annotation_id in ids:
        return [f"{name}: the id is used twice"]
    ids.add(annotation_id)
    image = images.get(annotation.get("image_id"))
    if image is None:
        return [f"{name}: image_id {annotation.get('image_id')!r} is not in 'images'"]
    if annotation.get("category_id") not in category_ids:
        return [f"{name}: category_id {annotation.get('category_id')!r} is not in 'categories'"]
    width, height = image["width"], image["height"]
    box = annotation.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(value) for value in box)):
        return [f"{name}: 'bbox' must be 4 finite numbers [x, y, width, height], got {box!r}"]
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return [f"{name}: the box {box} has no area (width and height must be positive)"]
    if x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > width + BOX_TOLERANCE or y + h > height + BOX_TOLERANCE:
        return [f"{name}: the box {box} (x, y, width, height) lies outside image {image['id']} ({width} x {height})"]
    if "segmentation" not in annotation:
        return []
    return [f"{name}: {problem}" for problem in _segmentation_problems(annotation["segmentation"], height, width)]


def _segmentation_problems(segmentation, height: int, width: int) -> list[str]:
    _, _, mask_utils = _pycocotools()
    if isinstance(segmentation, dict):
        if list(segmentation.get("size", [])) != [height, width]:
            return [f"the RLE mask's size {segmentation.get('size')!r} is not the image's [{height}, {width}]"]
        if "counts" not in segmentation:
            return ["the RLE mask has no 'counts'"]
        return []
    if not isinstance(segmentation, list) or not segmentation:
        return [f"'segmentation' must be a list of polygons or an RLE dict, got {type(segmentation).__name__}"]
    for polygon in segmentation:
        # pycocotools reads a 4-number "polygon" as a box: a polygon needs 3 points.
        if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2 or not all(map(_is_number, polygon)):
            return ["a polygon must be a flat list of at least 3 (x, y) points"]
    area = mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)))
    if area == 0:
        return ["the polygons cover no pixel (zero area)"]
    return []


def _find_problems(dataset: Mapping) -> tuple[list[str], dict[int, str]]:
    """`(problems of the file, its images and categories; {position of a bad annotation: its problem})`."""
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(dataset.get(key), list)]
    if missing:
        return [f"the annotation file has no {' / '.join(map(repr, missing))} list (COCO instances format)"], {}
    problems = []
    images = {}
    for position, image in enumerate(dataset["images"]):
        image_id = image.get("id")
        if not _is_id(image_id):
            problems.append(f"image at position {position}: 'id' must be an integer, got {image_id!r}")
        elif image_id in images:
            problems.append(f"image {image_id}: the id is used twice")
        elif not all(_is_id(image.get(key)) and image[key] > 0 for key in ("width", "height")):
            problems.append(f"image {image_id}: 'width' and 'height' must be positive integers")
        else:
            images[image_id] = image
    category_ids, names = set(), set()
    for position, category in enumerate(dataset["categories"]):
        category_id, name = category.get("id"), category.get("name")
        if not _is_id(category_id) or not isinstance(name, str):
            problems.append(f"category at position {position}: needs an integer 'id' and a 'name'")
        elif category_id in category_ids or name in names:
            problems.append(f"category {category_id} ({name!r}): its id or name is used twice")
        category_ids.add(category_id)
        names.add(name)
    bad, annotation_ids = {}, set()
    for position, annotation in enumerate(dataset["annotations"]):
        found = _annotation_problems(annotation, position, images, category_ids, annotation_ids)
        if found:
            bad[position] = found[0]
    return problems, bad


def _listed(problems: list[str]) -> str:
    return "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")


def check_coco_annotations(dataset: Mapping) -> None:
    """
    Check a COCO instances file (its parsed JSON) before pycocotools reads it, whose own checks are asserts or
    crashes far from the cause.

    Raises:
        `ValueError`: naming each problem found (the first 5 and how many there are): a missing `images`,
            `annotations` or `categories` list; an image without an integer `id` or positive `width` / `height`, or
            an id used twice; a category without `id` / `name`, or an id or name used twice (categories are matched
            to the model's labels by name); an annotation whose `id` is not a positive integer or is used twice
            (COCOeval marks matches by annotation id), whose `image_id` or `category_id` is unknown, whose `bbox`
            has no area or reaches more than `BOX_TOLERANCE` px past the image's border, whose polygons have fewer
            than 3 points or cover no pixel, or whose RLE mask's `size` is not the image's.
    """
    problems, bad = _find_problems(dataset)
    if problems or bad:
        raise ValueError("bad COCO annotations: " + _listed(problems + list(bad.values())))


def read_annotation_file(path: str | os.PathLike) -> dict:
    """The JSON object of a COCO annotation file. Raises `ValueError` naming the file when it is missing, not JSON, or
    not a JSON object."""
    try:
        with open(path, encoding="utf-8") as handle:
            dataset = json.load(handle)
    except FileNotFoundError:
        raise ValueError(f"the annotation file {os.fspath(path)} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"the annotation file {os.fspath(path)} is not JSON: {error}") from None
    if not isinstance(dataset, dict):
        raise ValueError(f"the annotation file {os.fspath(path)} holds no JSON object (COCO instances format)")
    return dataset


def load_coco_annotations(source, skip_invalid_annotations: bool = False):
    """
    A `pycocotools.coco.COCO` index of a COCO instances file, checked by [`check_coco_annotations`] first.

    Args:
        source (`str`, `os.PathLike` or `dict`): the JSON file, or its parsed content.
        skip_invalid_annotations (`bool`, defaults to `False`): leave out the annotations that fail the checks
            (a box without area, a zero-area polygon, ...: COCO's train2017 has a few) instead of refusing the file,
            with a warning that counts them and names the first ones. The scores then differ from pycocotools' on
            the file as it is, which would count such objects as never found. Problems of the images or categories
            are always errors.
    Raises:
        `ValueError`: the file is missing or not JSON, or the annotations are bad (each problem named).
    """
    coco_module, _, _ = _pycocotools()
    dataset = copy.deepcopy(dict(source)) if isinstance(source, Mapping) else read_annotation_file(source)
    problems, bad = _find_problems(dataset)
    if problems or (bad and not skip_invalid_annotations):
        hint = "" if problems else " (skip_invalid_annotations=True / --skip-invalid-annotations leaves them out)"
        raise ValueError("bad COCO annotations: " + _listed(problems + list(bad.values())) + hint)
    if bad:
        logger.warning(f"left out {len(bad)} invalid annotations: {_listed(list(bad.values()))}")
        dataset["annotations"] = [a for position, a in enumerate(dataset["annotations"]) if position not in bad]
    coco = coco_module.COCO()
    coco.dataset = dataset
    with _quiet():
        coco.createIndex()
    return coco


def image_files(coco, images_dir) -> dict[int, Path]:
    """`{image id: path}` of every image of the annotations (`file_name` under `images_dir`).

    Raises:
        `ValueError`: an image has no `file_name`, or files are missing (the first 5 named, and how many).
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise ValueError(f"the image folder {images_dir} does not exist")
    paths, missing = {}, []
    for image_id, image in sorted(coco.imgs.items()):
        if not isinstance(image.get("file_name"), str):
            raise ValueError(f"image {image_id} of the annotations has no 'file_name'")
        path = images_dir / image["file_name"]
        if not path.is_file():
            missing.append(f"{image['file_name']} (image {image_id})")
        paths[image_id] = path
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"images of the annotations are missing from {images_dir}: {', '.join(missing[:5])}{more}")
    return paths


# ----------------------------------------------------------------------------------------------- the predictions


def category_ids_by_label(id2label: Mapping, coco) -> dict[int, int]:
    """`{model label id: COCO category id}`, matching the model's label names (`config.id2label`) to the
    annotations' category names.

    Raises:
        `ValueError`: naming the model's labels that are no category of the annotations.
    """
    by_name = {category["name"]: category["id"] for category in coco.dataset["categories"]}
    unknown = [str(name) for name in id2label.values() if name not in by_name]
    if unknown:
        shown = ", ".join(map(repr, sorted(by_name)[:10])) + (", ..." if len(by_name) > 10 else "")
        raise ValueError(
            f"the model's labels {', '.join(map(repr, unknown[:5]))}{' and more' if len(unknown) > 5 else ''} "
            f"(config.id2label) are not category names of the annotations ({shown})"
        )
    return {int(label): by_name[name] for label, name in id2label.items()}


def _as_numpy(value, dtype, what: str, image_id) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if value.dtype.is_floating_point:
            value = value.float()
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        raise ValueError(f"the predicted {what} of image {image_id} are not all finite")
    return array.astype(dtype, copy=False)


def _is_float(value) -> bool:
    dtype = getattr(value, "dtype", None)
    if dtype is not None and hasattr(dtype, "is_floating_point"):
        return bool(dtype.is_floating_point)
    return np.asarray(value).dtype.kind in "fc"


def coco_results(predictions: Iterable[Mapping], coco, id2label: Mapping) -> list[dict]:
    """
    Predictions in COCO's results format (what `COCO.loadRes` reads and COCO's evaluation server takes).

    Args:
        predictions: one dict per image: `image_id` (the annotations' id), `boxes` `(n, 4)` xyxy in the image's own
            pixels, `scores` `(n,)`, `labels` `(n,)` the model's label ids (rows labelled -1 are padding and are
            dropped), and optionally `masks` `(n, height, width)` binary at the image's size. Tensors or arrays.
        coco: the annotations ([`load_coco_annotations`]).
        id2label: the model's `config.id2label`; categories are found by name ([`category_ids_by_label`]).
    Returns:
        one dict per detection: `image_id`, `category_id`, `bbox` `[x, y, width, height]`, `score` and, with masks,
        `segmentation` (compressed RLE, `counts` as text).
    Raises:
        `ValueError`: an unknown image id, a label id the model does not have, shapes that do not fit (naming the
            image), non-finite boxes or scores.
    """
    _, _, mask_utils = _pycocotools()
    category_of = category_ids_by_label(id2label, coco)
    results = []
    for prediction in predictions:
        image_id = prediction["image_id"]
        image_id = int(image_id.item() if hasattr(image_id, "item") else image_id)
        if image_id not in coco.imgs:
            raise ValueError(f"predictions for image {image_id}, which is not in the annotations")
        boxes = _as_numpy(prediction["boxes"], np.float64, "boxes", image_id).reshape(-1, 4)
        scores = _as_numpy(prediction["scores"], np.float64, "scores", image_id).reshape(-1)
        labels = _as_numpy(prediction["labels"], np.int64, "labels", image_id).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels; one each per "
                "detection"
            )
        masks = prediction.get("masks")
        if masks is not None:
            height, width = coco.imgs[image_id]["height"], coco.imgs[image_id]["width"]
            masks = _as_numpy(masks, np.float32 if _is_float(masks) else bool, "masks", image_id)
            if masks.dtype != bool:
                if not ((masks == 0) | (masks == 1)).all():
                    raise ValueError(
                        f"image {image_id}: the masks are not binary (0 / 1); threshold probabilities or logits first"
                    )
                masks = masks.astype(bool)
            if masks.shape != (len(boxes), height, width):
                raise ValueError(
                    f"image {image_id}: masks of shape {tuple(masks.shape)}, expected one {height} x {width} mask per "
                    f"detection ({len(boxes)}, {height}, {width}) at the annotated image size"
                )
        keep = labels >= 0
        unknown = sorted(set(labels[keep].tolist()) - set(category_of))
        if unknown:
            raise ValueError(f"image {image_id}: label ids {unknown} are not in the model's id2label")
        for index in np.flatnonzero(keep):
            x1, y1, x2, y2 = boxes[index].tolist()
            result = {
                "image_id": image_id,
                "category_id": category_of[int(labels[index])],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(scores[index]),
            }
            if masks is not None:
                rle = mask_utils.encode(np.asfortranarray(masks[index], dtype=np.uint8))
                result["segmentation"] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}
            results.append(result)
    return results


def write_coco_results(path, results: list[dict]) -> Path:
    """Write results ([`coco_results`]) as COCO's results JSON, atomically (readers never see half a file)."""
    from ...file_utils import write_json_atomically

    return write_json_atomically(path, results, indent=None)


# ------------------------------------------------------------------------------------------------------- scoring


def _empty_results(coco):
    """The results index `COCO.loadRes` would build for no detection (it fails on an empty list)."""
    coco_module, _, _ = _pycocotools()
    results = coco_module.COCO()
    results.dataset = {
        "images": list(coco.dataset["images"]),
        "categories": copy.deepcopy(coco.dataset["categories"]),
        "annotations": [],
    }
    with _quiet():
        results.createIndex()
    return results


def evaluate_coco_results(coco, results: list[dict], iou_types: Iterable[str] = IOU_TYPES) -> dict[str, dict]:
    """
    Score results ([`coco_results`]) against the annotations with pycocotools' `COCOeval` (every image of the
    annotations counts, also those without a detection; at most 100 detections per image, the highest scored).

    Args:
        coco: the annotations ([`load_coco_annotations`]).
        results: COCO results; for `"segm"` each needs its `segmentation`.
        iou_types: any of `"bbox"` (boxes) and `"segm"` (masks).
    Returns:
        `{iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl"}}`, floats in [0, 1]; -1 where the annotations hold no
        object of that size (pycocotools' convention). No detection at all scores 0.
    Raises:
        `ValueError`: an unknown IoU type, results without masks or annotations without `segmentation` for
            `"segm"`, results for images that are not in the annotations.
    """
    _, cocoeval_module, _ = _pycocotools()
    iou_types = tuple(iou_types)
    unknown = [iou_type for iou_type in iou_types if iou_type not in IOU_TYPES]
    if unknown:
        raise ValueError(f"unknown IoU types {unknown}; choose from {list(IOU_TYPES)}")
    stray = sorted({result["image_id"] for result in results} - set(coco.imgs))
    if stray:
        raise ValueError(f"results for images {stray[:5]} that are not in the annotations")
    scores = {}
    for iou_type in iou_types:
        if iou_type == "segm":
            unmasked = next((ann["id"] for ann in coco.dataset["annotations"] if "segmentation" not in ann), None)
            if unmasked is not None:
                raise ValueError(f"mask AP needs masks: annotation {unmasked} has no 'segmentation'")
            if any("segmentation" not in result for result in results):
                raise ValueError("mask AP needs masks: some results have no 'segmentation'")
        # loadRes takes the area (small / medium / large) of a result from its box when it has one: mask AP must use
        # the mask's own area, so each type gets its own copies holding only what it scores.
        dropped = "segmentation" if iou_type == "bbox" else "bbox"
        kept = [{key: value for key, value in result.items() if key != dropped} for result in results]
        with _quiet() as printed:
            detections = coco.loadRes(kept) if kept else _empty_results(coco)
            evaluator = cocoeval_module.COCOeval(coco, detections, iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        summary = [line.strip() for line in printed.getvalue().splitlines() if line.strip().startswith("Average")]
        logger.info("COCOeval %s:\n%s", iou_type, "\n".join(summary))
        scores[iou_type] = {name: float(value) for name, value in zip(METRIC_NAMES, evaluator.stats[:6])}
    return scores


# ----------------------------------------------------------------------------------------------------- inference


def _masks_of_detections(detections: Mapping, instances: Mapping, size: tuple[int, int]):
    """One bool mask `(height, width)` per detection of `post_process_object_detection`'s result, from
    `post_process_instance_segmentation(..., return_binary_maps=True)`'s, which leaves out instances whose mask is
    empty: both list the detections kept in the same order, so the masks are matched along it (label and score)
    and a detection left out gets an empty mask, which mask AP counts as a miss as mmdetection does."""
    import torch

    labels, scores = detections["labels"].tolist(), detections["scores"].tolist()
    masks = torch.zeros((len(labels), *size), dtype=torch.bool)
    segments = instances["segments_info"]
    binary = instances["segmentation"]
    position = 0
    for index, (label, score) in enumerate(zip(labels, scores)):
        if position < len(segments):
            segment = segments[position]
            if int(segment["label_id"]) == int(label) and math.isclose(segment["score"], score, rel_tol=1e-6):
                masks[index] = binary[segment["id"]].to(torch.bool).cpu()
                position += 1
    if position != len(segments):
        raise RuntimeError(
            "the image processor's instance masks do not follow its detections (labels and scores in the same "
            "order); cannot tell which mask belongs to which box"
        )
    return masks


def predict_coco_images(
    model,
    image_processor,
    coco,
    images_dir,
    batch_size: int = 2,
    device=None,
    threshold: float = 0.0,
    disable_progress: bool = False,
) -> Iterator[dict]:
    """
    Run an instance-segmentation model over every image of the annotations, as it is deployed: `image_processor`
    prepares the batch (`pixel_values`, `image_sizes`), its `post_process_object_detection` and
    `post_process_instance_segmentation(..., return_binary_maps=True)` give the boxes, scores, labels and masks at
    the image's annotated size.

    Args:
        model: a `PaCaViTMaskRCNNForInstanceSegmentation` (or a model with its eval output), in eval mode.
        image_processor: its `PaCaViTMaskRCNNImageProcessor`.
        coco: the annotations ([`load_coco_annotations`]); images are run in image id order.
        images_dir: the folder the annotations' `file_name`s are in.
        batch_size: images per forward pass.
        threshold: keep detections scored above it (0: all the model gives, as COCO results are scored).
    Yields:
        one prediction per image for [`coco_results`], as each batch is done (full-size masks of a whole dataset
        would not fit in memory: [`coco_results`] encodes them as they come): `image_id`, `boxes`, `scores`,
        `labels`, `masks`.
    Raises:
        `ValueError`: missing image files (named, checked before the first batch), a file that is not an image,
            or an image whose size is not the annotated `width` x `height` (EXIF orientation applied).
    """
    import torch
    from tqdm.auto import tqdm

    from ...images import open_image

    files = image_files(coco, images_dir)
    image_ids = sorted(files)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    with tqdm(total=len(image_ids), desc="COCO evaluation", unit="image", disable=disable_progress) as progress:
        for start in range(0, len(image_ids), batch_size):
            batch_ids = image_ids[start : start + batch_size]
            images, sizes = [], []
            for image_id in batch_ids:
                info = coco.imgs[image_id]
                try:
                    image = open_image(files[image_id])
                except ValueError as error:
                    raise ValueError(f"image {image_id} ({files[image_id]}): {error}") from None
                if image.size != (info["width"], info["height"]):
                    raise ValueError(
                        f"image {image_id} ({files[image_id]}) is {image.size[0]} x {image.size[1]} px, the "
                        f"annotations say {info['width']} x {info['height']}"
                    )
                images.append(image)
                sizes.append((info["height"], info["width"]))
            inputs = image_processor(images, return_tensors="pt")
            with torch.inference_mode():
                outputs = model(
                    pixel_values=inputs["pixel_values"].to(device), image_sizes=inputs["image_sizes"].to(device)
                )
            detected = image_processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes)
            segmented = image_processor.post_process_instance_segmentation(
                outputs, threshold=threshold, target_sizes=sizes, return_binary_maps=True
            )
            for image_id, detections, instances, size in zip(batch_ids, detected, segmented, sizes):
                yield {
                    "image_id": image_id,
                    "boxes": detections["boxes"].float().cpu(),
                    "scores": detections["scores"].float().cpu(),
                    "labels": detections["labels"].cpu(),
                    "masks": _masks_of_detections(detections, instances, size),
                }
            progress.update(len(batch_ids))


def evaluate_coco_model(
    model_name_or_path: str,
    annotations,
    images_dir,
    batch_size: int = 2,
    device: str | None = None,
    predictions_path=None,
    disable_progress: bool = False,
    skip_invalid_annotations: bool = False,
) -> dict[str, dict]:
    """
    Box and mask AP of an instance-segmentation model folder (or Hub id) on a COCO-format folder: the model with
    `AutoModelForInstanceSegmentation`, its saved image processor, [`predict_coco_images`], [`coco_results`] and
    [`evaluate_coco_results`]. With `predictions_path`, the COCO results are written there (atomically).
    `skip_invalid_annotations`: see [`load_coco_annotations`].

    Raises:
        `ValueError`: bad annotations or images (see [`load_coco_annotations`], [`predict_coco_images`]), labels of
            the model that are no category of the annotations, a model folder without a detector image processor.
    """
    import torch
    from transformers import AutoModelForInstanceSegmentation

    import paca_hf  # noqa: F401  (registers the PaCa-ViT Auto classes)

    from ...loading import load_image_processor

    coco = load_coco_annotations(annotations, skip_invalid_annotations=skip_invalid_annotations)
    image_files(coco, images_dir)  # fail on missing files before loading the model
    model = AutoModelForInstanceSegmentation.from_pretrained(model_name_or_path)
    category_ids_by_label(model.config.id2label, coco)  # fail on unknown label names before inference
    processor = load_image_processor(model_name_or_path, task="instance-segmentation")
    if not hasattr(processor, "post_process_instance_segmentation"):
        raise ValueError(
            f"{model_name_or_path} has no detector image processor ({type(processor).__name__} cannot post-process "
            "instances); save the model's PaCaViTMaskRCNNImageProcessor with it"
        )
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    predictions = predict_coco_images(
        model, processor, coco, images_dir, batch_size=batch_size, device=device, disable_progress=disable_progress
    )
    results = coco_results(predictions, coco, model.config.id2label)  # masks encoded batch by batch
    if predictions_path is not None:
        write_coco_results(predictions_path, results)
    return evaluate_coco_results(coco, results)


# The command line of scripts/evaluate_coco.py (kept here so that it is called and tested as a function).
CLI_DESCRIPTION = """Box and mask AP of an instance-segmentation model on a COCO-format folder, through pycocotools.

    python scripts/evaluate_coco.py --model pacavit-tiny-coco --annotations annotations/instances_val2017.json \\
        --images val2017 --output results.json --predictions predictions.json

`--model` is a folder or a Hub id holding the model and its image processor (the images get the model's own test
transform and post-processing). The model's labels (`config.id2label`) are matched to the annotations' categories
by NAME: COCO's 80 category ids (1..90 with gaps) are not the model's 0..79. Every image of the annotations is run;
its file must exist under `--images` with the annotated size.

Prints and, with `--output`, writes `{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl"}, "segm": {...}}`
(pycocotools' COCOeval: AP over IoU 0.50:0.95, at 0.50 and 0.75, and of small / medium / large objects; -1 where the
annotations hold no object of that size). `--predictions` writes the detections in COCO's results format (boxes
[x, y, width, height], masks as compressed RLE), which COCO's evaluation server and `COCO.loadRes` read.
Bad input (a missing or unreadable file, annotations that name unknown images or categories, boxes outside the
image, polygons of zero area, labels that are no category) ends with one `error:` line and exit status 2.
`--skip-invalid-annotations` leaves out the annotations that fail the checks instead (a warning counts them and
names the first): the scores then differ from pycocotools' on the file as it is.
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=CLI_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or Hub id (with its image processor)")
    parser.add_argument("--annotations", required=True, help="COCO instances JSON file")
    parser.add_argument("--images", required=True, help="folder of the annotations' file_name entries")
    parser.add_argument("--output", default=None, help="write the scores to this JSON file")
    parser.add_argument("--predictions", default=None, help="write the detections as COCO results to this JSON file")
    parser.add_argument("--batch-size", type=int, default=2, help="images per forward pass (default 2)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--disable-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--skip-invalid-annotations",
        action="store_true",
        help="leave out annotations that fail the checks (counted in a warning) instead of stopping",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    for flag in ("output", "predictions"):
        path = getattr(args, flag)
        if path is not None and os.path.isdir(path):
            parser.error(f"--{flag} {path} is a folder; pass the path of the JSON file to write")
    return args


def main(argv=None) -> int:
    """Evaluate, print and write the scores; exit status 2 with one `error:` line for bad input."""
    args = parse_args(argv)
    try:
        scores = evaluate_coco_model(
            args.model,
            args.annotations,
            args.images,
            batch_size=args.batch_size,
            device=args.device,
            predictions_path=args.predictions,
            disable_progress=args.disable_progress,
            skip_invalid_annotations=args.skip_invalid_annotations,
        )
    except ValueError as error:
        print(f"error: {str(error).strip()}", file=sys.stderr)
        return 2
    print(json.dumps(scores, indent=2))
    if args.output:
        from ...file_utils import write_json_atomically

        write_json_atomically(args.output, scores)
    return 0
