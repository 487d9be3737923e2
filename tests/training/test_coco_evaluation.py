"""COCO scoring (`paca_hf.training.detection.evaluation`) on hand-made COCO files: the values pycocotools gives for
cases whose AP is worked out by hand, categories matched by name, crowd regions, bad annotation files."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from paca_hf.training.detection import (
    METRIC_NAMES,
    coco_results,
    evaluate_coco_results,
    image_files,
    load_coco_annotations,
    predict_coco_images,
    write_coco_results,
)


SIZE = 64
COCO_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCO's 10 IoU thresholds


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def _box_mask(x, y, w, h, size=SIZE):
    mask = np.zeros((size, size), dtype=bool)
    mask[y : y + h, x : x + w] = True
    return mask


def _annotation(annotation_id, image_id, category_id, box, iscrowd=0):
    x, y, w, h = box
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x, y, w, h],
        "area": w * h,
        "iscrowd": iscrowd,
        "segmentation": _rle(_box_mask(x, y, w, h)),
    }


def _dataset(annotations, categories=((3, "cat"), (17, "dog"))):
    """Two 64 x 64 images; category ids that are not 0..K-1 (as COCO's are not)."""
    return {
        "images": [{"id": i, "width": SIZE, "height": SIZE, "file_name": f"{i}.png"} for i in (1, 2)],
        "categories": [{"id": c, "name": n} for c, n in categories],
        "annotations": annotations,
    }


ID2LABEL = {0: "dog", 1: "cat"}  # the model's order differs from the file's ids


def _prediction(image_id, rows):
    """rows: (box xywh, score, model label)."""
    boxes = np.array([[x, y, x + w, y + h] for (x, y, w, h), _, _ in rows], dtype=np.float64).reshape(-1, 4)
    return {
        "image_id": image_id,
        "boxes": boxes,
        "scores": np.array([score for _, score, _ in rows]),
        "labels": np.array([label for _, _, label in rows], dtype=np.int64),
        "masks": np.stack([_box_mask(*box) for box, _, _ in rows]) if rows else np.zeros((0, SIZE, SIZE), bool),
    }


def _score(dataset, predictions, iou_types=("bbox", "segm")):
    coco = load_coco_annotations(dataset)
    return evaluate_coco_results(coco, coco_results(predictions, coco, ID2LABEL), iou_types)


SMALL_CAT, MEDIUM_DOG = (10, 10, 10, 10), (20, 16, 40, 40)  # areas 100 (< 32^2) and 1600 (32^2 .. 96^2)


def test_perfect_predictions_score_one_and_categories_map_by_name():
    dataset = _dataset([_annotation(1, 1, 3, SMALL_CAT), _annotation(2, 2, 17, MEDIUM_DOG)])
    predictions = [_prediction(1, [(SMALL_CAT, 0.9, 1)]), _prediction(2, [(MEDIUM_DOG, 0.8, 0)])]
    coco = load_coco_annotations(dataset)
    results = coco_results(predictions, coco, ID2LABEL)
    assert [r["category_id"] for r in results] == [3, 17]  # "cat" -> 3, "dog" -> 17: by name, not by index
    assert results[0]["bbox"] == [10.0, 10.0, 10.0, 10.0]  # xyxy -> xywh
    np.testing.assert_array_equal(mask_utils.decode(results[1]["segmentation"]), _box_mask(*MEDIUM_DOG))
    scores = evaluate_coco_results(coco, results)
    for iou_type in ("bbox", "segm"):
        assert set(scores[iou_type]) == set(METRIC_NAMES)
        for name in ("AP", "AP50", "AP75", "APs", "APm"):
            assert scores[iou_type][name] == pytest.approx(1.0, abs=1e-12)  # pycocotools averages 101 ones
        assert scores[iou_type]["APl"] == -1.0  # no large object in the file

    # the same detections with the labels swapped are all wrong
    swapped = [_prediction(1, [(SMALL_CAT, 0.9, 0)]), _prediction(2, [(MEDIUM_DOG, 0.8, 1)])]
    assert _score(dataset, swapped)["bbox"]["AP"] == 0.0


def test_a_shifted_box_scores_the_fraction_of_thresholds_its_iou_passes():
    dataset = _dataset([_annotation(1, 1, 3, SMALL_CAT)])
    shifted = (12, 10, 10, 10)  # 2 px to the right: overlap 8 x 10 = 80, union 100 + 100 - 80 = 120
    iou = 80 / 120
    # One detection, one object: at a threshold <= IoU it is a true positive (precision 1 at every recall point of
    # the 101-point interpolation), above it a false positive (precision 0): AP = fraction of thresholds <= IoU.
    expected = float(np.mean(COCO_THRESHOLDS <= iou))
    assert expected == pytest.approx(0.4)
    scores = _score(dataset, [_prediction(1, [(shifted, 0.7, 1)])])
    for iou_type in ("bbox", "segm"):
        assert scores[iou_type]["AP"] == pytest.approx(expected, abs=1e-12)
        assert scores[iou_type]["AP50"] == pytest.approx(1.0, abs=1e-12) and scores[iou_type]["AP75"] == 0.0
        assert scores[iou_type]["APs"] == pytest.approx(expected, abs=1e-12)


def test_no_prediction_scores_zero():
    dataset = _dataset([_annotation(1, 1, 3, SMALL_CAT), _annotation(2, 2, 17, MEDIUM_DOG)])
    coco = load_coco_annotations(dataset)
    for predictions in ([], [_prediction(1, []), _prediction(2, [])]):
        results = coco_results(predictions, coco, ID2LABEL)
        assert results == []
        scores = evaluate_coco_results(coco, results)
        for iou_type in ("bbox", "segm"):
            assert scores[iou_type]["AP"] == 0.0 and scores[iou_type]["APs"] == 0.0 and scores[iou_type]["APm"] == 0.0
    # padding rows (label -1, as the model's eval output has them) are no detections
    padded = _prediction(1, [(SMALL_CAT, 0.9, 1)])
    padded["labels"][:] = -1
    assert coco_results([padded], coco, ID2LABEL) == []


def test_crowd_regions_are_ignored_as_coco_does():
    crowd_box = (30, 30, 20, 20)
    only_the_cat = [_prediction(1, [(SMALL_CAT, 0.9, 1)])]
    # an undetected crowd region is not a miss, a detection on it is not a false positive (it ranks first here)
    crowd = _dataset([_annotation(1, 1, 3, SMALL_CAT), _annotation(2, 1, 3, crowd_box, iscrowd=1)])
    assert _score(crowd, only_the_cat)["bbox"]["AP"] == pytest.approx(1.0, abs=1e-12)
    detected = [_prediction(1, [(crowd_box, 0.95, 1), (SMALL_CAT, 0.9, 1)])]
    assert _score(crowd, detected)["bbox"]["AP"] == pytest.approx(1.0, abs=1e-12)
    # control: the same region as an ordinary object, never detected: recall reaches 1/2 at precision 1, so 51 of
    # the 101 recall points (0, 0.01, ..., 0.5) have precision 1 and the rest 0
    plain = _dataset([_annotation(1, 1, 3, SMALL_CAT), _annotation(2, 1, 3, crowd_box)])
    assert _score(plain, only_the_cat)["bbox"]["AP"] == pytest.approx(51 / 101)


def test_unknown_label_names_and_label_ids_are_named():
    coco = load_coco_annotations(_dataset([_annotation(1, 1, 3, SMALL_CAT)]))
    with pytest.raises(ValueError, match="'zebra'"):
        coco_results([], coco, {0: "dog", 1: "cat", 2: "zebra"})
    with pytest.raises(ValueError, match=r"label ids \[5\]"):
        coco_results([_prediction(1, [(SMALL_CAT, 0.9, 5)])], coco, ID2LABEL)
    with pytest.raises(ValueError, match="image 9"):
        coco_results([_prediction(9, [(SMALL_CAT, 0.9, 1)])], coco, ID2LABEL)
    probabilities = _prediction(1, [(SMALL_CAT, 0.9, 1)])
    probabilities["masks"] = probabilities["masks"] * 0.8
    with pytest.raises(ValueError, match="image 1: the masks are not binary"):
        coco_results([probabilities], coco, ID2LABEL)
    probabilities["masks"] = torch.from_numpy(probabilities["masks"] / 0.8).float()  # 0.0 / 1.0 are binary
    assert len(coco_results([probabilities], coco, ID2LABEL)) == 1
    wrong_size = _prediction(1, [(SMALL_CAT, 0.9, 1)])
    wrong_size["masks"] = wrong_size["masks"][:, :32]
    with pytest.raises(ValueError, match="image 1: masks of shape"):
        coco_results([wrong_size], coco, ID2LABEL)


def _polygon(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(image_id=7), "annotation 5: image_id 7 is not in 'images'"),
        (lambda a: a.update(category_id=4), "annotation 5: category_id 4 is not in 'categories'"),
        (lambda a: a.update(bbox=[50, 10, 20, 10]), r"annotation 5: the box \[50, 10, 20, 10\].*outside image 1"),
        (lambda a: a.update(bbox=[10, 10, 0, 10]), "annotation 5: the box .* has no area"),
        (lambda a: a.update(segmentation=[[10, 10, 20, 20, 30, 30]]), "annotation 5: the polygons cover no pixel"),
        (lambda a: a.update(segmentation=[[10, 10, 20, 20]]), "annotation 5: a polygon must be .* at least 3"),
        (lambda a: a.update(segmentation={"size": [32, 32], "counts": "x"}), "annotation 5: the RLE mask's size"),
        (lambda a: a.update(id=0), "'id' must be a positive integer"),
    ],
)
def test_bad_annotations_are_refused_naming_the_annotation(change, message):
    annotation = _annotation(5, 1, 3, SMALL_CAT)
    annotation["segmentation"] = _polygon(*SMALL_CAT)
    load_coco_annotations(_dataset([annotation]))  # valid as made
    change(annotation)
    with pytest.raises(ValueError, match=message):
        load_coco_annotations(_dataset([annotation]))


def test_invalid_annotations_can_be_left_out_and_are_counted(caplog):
    # the shape of annotation 918 of COCO's instances_train2017.json: a flat polygon, a box 0 px high
    flat = {
        "id": 918, "image_id": 1, "category_id": 17, "bbox": [29.65, 38.33, 1.03, 0.0], "area": 0.0, "iscrowd": 0,
        "segmentation": [[29.65, 38.33, 29.65, 38.33, 30.68, 38.33, 30.68, 38.33]],
    }  # fmt: skip
    dataset = _dataset([_annotation(1, 1, 3, SMALL_CAT), flat])
    with pytest.raises(ValueError, match="annotation 918: the box .* has no area .*--skip-invalid-annotations"):
        load_coco_annotations(dataset)
    with caplog.at_level("WARNING", logger="paca_hf.training.detection.evaluation"):
        coco = load_coco_annotations(dataset, skip_invalid_annotations=True)
    assert "left out 1 invalid annotations: annotation 918: the box" in caplog.text
    assert sorted(coco.anns) == [1] and len(dataset["annotations"]) == 2  # the caller's data is left as it was
    scores = evaluate_coco_results(coco, coco_results([_prediction(1, [(SMALL_CAT, 0.9, 1)])], coco, ID2LABEL))
    assert scores["bbox"]["AP"] == pytest.approx(1.0, abs=1e-12)
    # problems of the images or categories are not skipped
    dataset["images"][1]["width"] = 0
    with pytest.raises(ValueError, match="image 2: 'width' and 'height' must be positive"):
        load_coco_annotations(dataset, skip_invalid_annotations=True)


def test_files_missing_not_json_and_missing_images_are_named(tmp_path):
    with pytest.raises(ValueError, match="absent.json does not exist"):
        load_coco_annotations(tmp_path / "absent.json")
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="broken.json is not JSON"):
        load_coco_annotations(tmp_path / "broken.json")
    coco = load_coco_annotations(_dataset([]))
    (tmp_path / "1.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"missing from .*: 2.png \(image 2\)"):
        image_files(coco, tmp_path)
    (tmp_path / "2.png").write_bytes(b"")
    assert image_files(coco, tmp_path) == {1: tmp_path / "1.png", 2: tmp_path / "2.png"}


def test_results_file_is_what_pycocotools_reads(tmp_path):
    dataset = _dataset([_annotation(1, 1, 3, SMALL_CAT), _annotation(2, 2, 17, MEDIUM_DOG)])
    (tmp_path / "instances.json").write_text(json.dumps(dataset), encoding="utf-8")
    coco = load_coco_annotations(tmp_path / "instances.json")
    shifted = (12, 10, 10, 10)
    results = coco_results(
        [_prediction(1, [(shifted, 0.7, 1)]), _prediction(2, [(MEDIUM_DOG, 0.8, 0)])], coco, ID2LABEL
    )
    path = write_coco_results(tmp_path / "results.json", results)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    loaded = COCO(str(tmp_path / "instances.json")).loadRes(str(path))
    assert len(loaded.anns) == 2
    np.testing.assert_array_equal(loaded.annToMask(loaded.anns[1]), _box_mask(*shifted))


def test_mask_ap_sizes_a_detection_by_its_mask_not_its_box():
    def l_shape(x, y, upside_down=False):  # a thin L: 40 x 40 box (medium), 304 px of mask (small)
        mask = np.zeros((SIZE, SIZE), dtype=bool)
        mask[y : y + 40, x + 36 * upside_down : x + 36 * upside_down + 4] = True
        mask[y + 36 * (not upside_down) : y + 36 * (not upside_down) + 4, x : x + 40] = True
        return mask

    truth, stray = l_shape(10, 10), l_shape(20, 14, upside_down=True)  # the stray L lies beside the true one
    assert not (truth & stray).any() and truth.sum() == stray.sum() == 304
    annotation = {
        "id": 1,
        "image_id": 1,
        "category_id": 3,
        "bbox": [10, 10, 40, 40],
        "area": 304,
        "iscrowd": 0,
        "segmentation": _rle(truth),
    }
    coco = load_coco_annotations(_dataset([annotation]))

    def detection(mask, score):
        ys, xs = np.nonzero(mask)
        box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        return {"image_id": 1, "boxes": [box], "scores": [score], "labels": [1], "masks": mask[None]}

    results = coco_results([detection(stray, 0.95), detection(truth, 0.9)], coco, ID2LABEL)
    # Among small objects the stray mask (304 px) is a false positive ranked above the true one: precision 1/2 at
    # recall 1, AP 0.5. Sized by its 40 x 40 box it would fall outside "small" and be ignored (APs 1).
    assert evaluate_coco_results(coco, results, ["segm"])["segm"]["APs"] == pytest.approx(0.5, abs=1e-12)


# ------------------------------------------------------------------------------------------------ inference loop


class TruthAsDetections(torch.nn.Module):
    """Stands in for the detector, with its eval output (`pred_boxes` xyxy in `pixel_values` pixels, `scores`,
    `labels` -1 on padding rows, `mask_logits`, `image_sizes`): each image's annotated boxes, scaled to the size the
    processor resized it to, a mask that fills the box, and one padding row."""

    def __init__(self, coco, label_of_category):
        super().__init__()
        self.coco, self.label_of_category = coco, label_of_category
        self.image_ids = iter(sorted(coco.imgs))  # the loop runs the images in id order

    def forward(self, pixel_values, image_sizes):
        batch = pixel_values.shape[0]
        rows = max(len(self.coco.getAnnIds(imgIds=i)) for i in self.coco.imgs) + 1
        boxes, scores = torch.zeros(batch, rows, 4), torch.zeros(batch, rows)
        labels = torch.full((batch, rows), -1, dtype=torch.int64)
        for index, (height, width) in enumerate(image_sizes.tolist()):
            image_id = next(self.image_ids)
            info = self.coco.imgs[image_id]
            scale = torch.tensor([width / info["width"], height / info["height"]] * 2)
            for row, annotation in enumerate(self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))):
                x, y, w, h = annotation["bbox"]
                boxes[index, row] = torch.tensor([x, y, x + w, y + h], dtype=torch.float32) * scale
                scores[index, row] = 0.9 - 0.1 * row
                labels[index, row] = self.label_of_category[annotation["category_id"]]
        mask_logits = torch.full((batch, rows, 28, 28), 20.0)
        return {
            "pred_boxes": boxes,
            "scores": scores,
            "labels": labels,
            "mask_logits": mask_logits,
            "image_sizes": image_sizes,
        }


def _rectangles_folder(folder):
    """A COCO folder of two noise images of different sizes holding rectangles (whose masks are their boxes)."""
    sizes = {1: (64, 64), 2: (48, 80)}  # (height, width)
    objects = [(1, 3, (10, 10, 10, 10)), (1, 17, (20, 16, 40, 40)), (2, 17, (4, 6, 30, 20)), (2, 3, (50, 20, 24, 24))]
    annotations = []
    for number, (image_id, category_id, (x, y, w, h)) in enumerate(objects, start=1):
        mask = np.zeros(sizes[image_id], dtype=bool)
        mask[y : y + h, x : x + w] = True
        annotations.append(
            {
                "id": number,
                "image_id": image_id,
                "category_id": category_id,
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
                "segmentation": _rle(mask),
            }
        )
    dataset = _dataset(annotations)
    rng = np.random.default_rng(0)
    for image in dataset["images"]:
        image["height"], image["width"] = sizes[image["id"]]
        pixels = rng.integers(0, 256, size=(*sizes[image["id"]], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / image["file_name"])
    (folder / "instances.json").write_text(json.dumps(dataset), encoding="utf-8")
    return folder / "instances.json"


def test_the_loop_maps_detections_back_to_the_annotated_images(tmp_path):
    from paca_hf.image_processing_pacavit_mask_rcnn import PaCaViTMaskRCNNImageProcessor

    coco = load_coco_annotations(_rectangles_folder(tmp_path))
    # images resized by 1.5 and 1.6 (different sizes, padded into one batch): boxes must be scaled back per image
    processor = PaCaViTMaskRCNNImageProcessor(size={"shortest_edge": 96, "longest_edge": 128})
    model = TruthAsDetections(coco, {3: 1, 17: 0})
    predictions = list(
        predict_coco_images(model, processor, coco, tmp_path, batch_size=2, device="cpu", disable_progress=True)
    )
    assert [p["image_id"] for p in predictions] == [1, 2]
    assert [len(p["labels"]) for p in predictions] == [2, 2]  # padding rows dropped
    np.testing.assert_allclose(predictions[1]["boxes"][0].numpy(), [4, 6, 34, 26], atol=1e-4)
    assert predictions[1]["masks"].shape == (2, 48, 80)
    scores = evaluate_coco_results(coco, coco_results(predictions, coco, ID2LABEL))
    for iou_type in ("bbox", "segm"):
        assert scores[iou_type]["AP"] == pytest.approx(1.0, abs=1e-12), iou_type

    # an image that is not the size the annotations give is named, not scored
    Image.new("RGB", (80, 64)).save(tmp_path / "2.png")
    with pytest.raises(ValueError, match=r"image 2 \(.*2.png\) is 80 x 64 px, the annotations say 80 x 48"):
        list(predict_coco_images(TruthAsDetections(coco, {3: 1, 17: 0}), processor, coco, tmp_path, device="cpu"))
