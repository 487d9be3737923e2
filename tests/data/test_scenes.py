"""The synthetic ADE20k-schema scenes: determinism, schema, label range, colour-independence, disk round trip."""

import datasets
import numpy as np
import pytest

from paca_hf.data.scenes import (
    SCENE_CLASSES,
    id2label,
    label2id,
    make_scenes,
    save_coco_scenes,
    save_scenes_to_disk,
    scene_arrays,
    scene_instances,
)


K = len(SCENE_CLASSES)


def _raw_bytes(ds):
    undecoded = ds.cast_column("image", datasets.Image(decode=False)).cast_column(
        "annotation", datasets.Image(decode=False)
    )
    return [(row["image"]["bytes"], row["annotation"]["bytes"]) for row in undecoded]


def _arrays(ds):
    images = np.stack([np.array(im) for im in ds["image"]])
    labels = np.stack([np.array(an) for an in ds["annotation"]])
    return images, labels


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(80, image_size=(64, 64), seed=0)


def test_same_seed_same_bytes_different_seed_different():
    a = make_scenes(5, image_size=(40, 56), seed=3)
    b = make_scenes(5, image_size=(40, 56), seed=3)
    c = make_scenes(5, image_size=(40, 56), seed=4)
    assert _raw_bytes(a) == _raw_bytes(b)
    bytes_a, bytes_c = _raw_bytes(a), _raw_bytes(c)
    assert all(x[0] != y[0] and x[1] != y[1] for x, y in zip(bytes_a, bytes_c))
    # image i depends on (seed, i) only: a shorter run is a prefix, start_index shifts along the same stream
    assert _raw_bytes(make_scenes(2, image_size=(40, 56), seed=3)) == bytes_a[:2]
    assert _raw_bytes(make_scenes(2, image_size=(40, 56), seed=3, start_index=3)) == bytes_a[3:5]


def test_schema(scenes):
    assert scenes.column_names == ["image", "annotation"]
    assert isinstance(scenes.features["image"], datasets.Image)
    assert isinstance(scenes.features["annotation"], datasets.Image)
    row = make_scenes(1, image_size=(48, 80), seed=1)[0]
    assert row["image"].mode == "RGB" and row["annotation"].mode == "L"
    assert row["image"].size == (80, 48) and row["annotation"].size == (80, 48)  # PIL sizes are (W, H)


def test_label_values_and_class_names(scenes):
    _, labels = _arrays(scenes)
    assert labels.min() == 0 and labels.max() == K  # 0 = other, 1..K = shapes, nothing else
    counts = np.bincount(labels.ravel(), minlength=K + 1)
    assert len(counts) == K + 1
    assert (counts[1:] > 0).all()  # every shape class occurs
    assert counts[0] / counts.sum() > 0.5  # background is the largest part, as "other" is in ADE20k
    # most images hold several shapes (objects of 2+ classes in one image)
    assert np.mean([len(np.unique(lab[lab > 0])) >= 2 for lab in labels]) > 0.5
    assert id2label() == dict(enumerate(SCENE_CLASSES))
    assert id2label(include_background=True)[0] == "other"
    assert id2label(include_background=True)[K] == SCENE_CLASSES[-1]
    assert label2id()["disc"] == 0 and len(set(SCENE_CLASSES)) == K


def _region_colours(images, labels):
    """Mean colour of every (image, class) region of at least 10 pixels, and its class."""
    feats, classes = [], []
    for img, lab in zip(images, labels):
        for c in range(1, K + 1):
            mask = lab == c
            if mask.sum() >= 10:
                feats.append(img[mask].mean(axis=0))
                classes.append(c)
    return np.array(feats), np.array(classes)


def _colour_statistics(images, labels):
    """(nearest-class-mean accuracy on a held-out half, max eta^2 over channels, spread of class means)."""
    feats, classes = _region_colours(images, labels)
    half = len(feats) // 2
    train_means = np.stack([feats[:half][classes[:half] == c].mean(axis=0) for c in range(1, K + 1)])
    dist = ((feats[half:, None, :] - train_means[None]) ** 2).sum(-1)
    accuracy = float(np.mean(dist.argmin(1) + 1 == classes[half:]))
    # eta^2 = between-class sum of squares / total sum of squares, per colour channel
    means = np.stack([feats[classes == c].mean(axis=0) for c in range(1, K + 1)])
    counts = np.array([(classes == c).sum() for c in range(1, K + 1)])
    grand = feats.mean(axis=0)
    eta2 = (counts[:, None] * (means - grand) ** 2).sum(0) / ((feats - grand) ** 2).sum(0)
    spread = max(np.abs(means[i] - means[j]).max() for i in range(K) for j in range(K))
    return accuracy, float(eta2.max()), float(spread)


def test_colour_does_not_predict_the_class():
    images, labels = _arrays(make_scenes(160, image_size=(48, 48), seed=0))
    images = images.astype(np.float64)
    accuracy, eta2, spread = _colour_statistics(images, labels)
    # ~400 regions. With colour independent of class: accuracy ~ chance (1/K = 0.2), eta^2 ~ (K-1)/N ~ 0.01,
    # class means differ by sampling noise only (region colours have std ~70, a class mean's ~8).
    assert accuracy < 1 / K + 0.12, accuracy
    assert eta2 < 0.05, eta2
    assert spread < 35, spread

    # control: the same statistics do see colour when it is tied to the class
    palette = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30], [30, 230, 230]], float)
    tinted = images.copy()
    for c in range(1, K + 1):
        tinted[labels == c] = 0.5 * tinted[labels == c] + 0.5 * palette[c - 1]
    accuracy, eta2, spread = _colour_statistics(tinted, labels)
    assert accuracy > 0.6 and eta2 > 0.3 and spread > 60, (accuracy, eta2, spread)


def test_save_to_disk_and_load_dataset_back(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = tmp_path / "scenes"
    returned = save_scenes_to_disk(folder, num_train=6, num_validation=3, image_size=(32, 40), seed=5)
    assert str(returned) == str(folder)
    loaded = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
    assert set(loaded.keys()) == {"train", "validation"}
    assert loaded["train"].num_rows == 6 and loaded["validation"].num_rows == 3
    for split in ("train", "validation"):
        assert isinstance(loaded[split].features["image"], datasets.Image)
        assert isinstance(loaded[split].features["annotation"], datasets.Image)
        row = loaded[split][0]
        assert row["image"].mode == "RGB" and row["annotation"].mode == "L"
    # pixels identical to the in-memory scenes; validation continues the stream after train (disjoint)
    expected_train = _arrays(make_scenes(6, image_size=(32, 40), seed=5))
    expected_val = _arrays(make_scenes(3, image_size=(32, 40), seed=5, start_index=6))
    for got, want in zip(_arrays(loaded["train"]), expected_train):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(_arrays(loaded["validation"]), expected_val):
        np.testing.assert_array_equal(got, want)


# Scenes 0-7 of the stream 3 at 48 x 64 as the code before the instance API drew them (commit 2c34591): pixels per
# annotation value (0 = other, 1..5 the shapes) and the mean of the image. Counts get a pixel of slack and means 0.05,
# for another CPU's last bit of sin / cos on a shape's edge; drawing anything else shifts whole shapes and colours.
SCENES_BEFORE_INSTANCES = [
    ([2628, 344, 0, 0, 30, 70], 130.92),
    ([2767, 175, 0, 130, 0, 0], 119.18),
    ([2682, 295, 0, 0, 95, 0], 111.04),
    ([2548, 71, 336, 0, 0, 117], 120.91),
    ([2460, 422, 0, 0, 124, 66], 119.90),
    ([2508, 157, 174, 113, 120, 0], 144.42),
    ([2722, 29, 0, 0, 245, 76], 162.63),
    ([2752, 121, 0, 0, 0, 199], 119.64),
]


def test_scenes_are_drawn_as_before_the_instances():
    for index, (counts, mean) in enumerate(SCENES_BEFORE_INSTANCES):
        image, annotation = scene_arrays(index, (48, 64), seed=3)
        np.testing.assert_allclose(np.bincount(annotation.ravel(), minlength=K + 1), counts, atol=1)
        assert abs(image.mean() - mean) < 0.05


def test_instances_partition_the_shapes_and_boxes_are_the_masks_extents():
    from pycocotools import mask as mask_utils

    overlapped = 0
    for index in range(12):
        image, annotation, instances = scene_instances(index, (48, 64), seed=3)
        expected_image, expected_annotation = scene_arrays(index, (48, 64), seed=3)
        np.testing.assert_array_equal(image, expected_image)
        np.testing.assert_array_equal(annotation, expected_annotation)
        masks = np.stack([instance["mask"] for instance in instances])
        assert masks.dtype == bool and masks.shape[1:] == annotation.shape
        assert (masks.sum(axis=0) <= 1).all()  # no pixel in two instances
        np.testing.assert_array_equal(masks.any(axis=0), annotation > 0)  # together: every shape pixel
        for instance in instances:
            assert instance["mask"].any()
            assert (annotation[instance["mask"]] == instance["label"] + 1).all()
            # COCO's own box of the mask, [x, y, width, height]
            x, y, w, h = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(instance["mask"], dtype=np.uint8)))
            assert instance["box"] == (x, y, x + w, y + h)
        labels = [instance["label"] for instance in instances]
        overlapped += len(labels) > len(set(labels)) or any(
            (annotation == label + 1).sum() > instance["mask"].sum() for instance, label in zip(instances, labels)
        )
    assert overlapped > 0  # the scenes tested hold instances a label map alone does not separate


def test_coco_folder_loads_with_pycocotools_and_the_truth_scores_one(tmp_path):
    from PIL import Image
    from pycocotools.coco import COCO

    from paca_hf.training.detection import coco_results, evaluate_coco_results, load_coco_annotations

    folder = tmp_path / "scenes"
    assert save_coco_scenes(folder, num_images=6, image_size=(40, 56), seed=2, start_index=4) == str(folder)
    coco = COCO(str(folder / "instances.json"))
    assert sorted(coco.getImgIds()) == [4, 5, 6, 7, 8, 9]
    assert {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())} == {n: i + 1 for i, n in id2label().items()}
    predictions = []
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        image, annotation, instances = scene_instances(image_id, (40, 56), seed=2)
        np.testing.assert_array_equal(np.array(Image.open(folder / "images" / info["file_name"])), image)
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert len(annotations) == len(instances)
        for annotation_entry, instance in zip(annotations, instances):
            np.testing.assert_array_equal(coco.annToMask(annotation_entry).astype(bool), instance["mask"])
        boxes = np.array([instance["box"] for instance in instances], dtype=float)
        labels = np.array([instance["label"] for instance in instances])
        masks = np.stack([instance["mask"] for instance in instances])
        predictions.append(
            {"image_id": image_id, "boxes": boxes, "scores": np.ones(len(labels)), "labels": labels, "masks": masks}
        )
    checked = load_coco_annotations(folder / "instances.json")  # passes the package's own checks too
    scores = evaluate_coco_results(checked, coco_results(predictions, checked, id2label()))
    for iou_type in ("bbox", "segm"):
        assert scores[iou_type]["AP"] == pytest.approx(1.0, abs=1e-12)
