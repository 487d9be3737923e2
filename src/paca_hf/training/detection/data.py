"""Data of the COCO fine-tune: COCO-format folders (checked by `evaluation.load_coco_annotations`) as training
examples (image, boxes, classes, masks), the built-in instance scenes written as such folders, the class names.

Crowd annotations (`iscrowd` 1) are left out of the training targets, as mmdetection's Mask R-CNN leaves them
(COCOeval still scores against them). Training images without any other annotation are skipped, as mmdetection's
`filter_empty_gt=True` does, counted in the log; evaluation runs every image.
"""

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..arguments import BUILTIN_SCENES
from ..transforms import decode_image
from .evaluation import image_files, load_coco_annotations, read_annotation_file


logger = logging.getLogger(__name__)

BUILTIN_SCENES_FOLDER = "builtin-scenes-coco"
# The built-in scenes' default split sizes (as the ADE20k fine-tune's: 200 training, 50 validation scenes).
BUILTIN_TRAIN_IMAGES, BUILTIN_EVAL_IMAGES = 200, 50


def load_coco_split(annotations, images_dir, num_images: int | None = None, skip_invalid_annotations: bool = False):
    """A checked COCO index of one split: `(coco, {image id: path})`.

    Args:
        annotations: the instances JSON file.
        images_dir: the folder of its `file_name`s.
        num_images: keep only the first N images by id (and their annotations).
        skip_invalid_annotations: see `evaluation.load_coco_annotations`.
    Raises:
        `ValueError`: naming the problem: the file missing or not JSON, bad annotations (unknown image or category
            ids, boxes outside the image, zero-area polygons, ...: each named), missing image files.
    """
    dataset = read_annotation_file(annotations)
    if num_images is not None and isinstance(dataset.get("images"), list):
        kept = set(
            sorted(image.get("id") for image in dataset["images"] if isinstance(image.get("id"), int))[:num_images]
        )
        dataset["images"] = [image for image in dataset["images"] if image.get("id") in kept]
        if isinstance(dataset.get("annotations"), list):
            dataset["annotations"] = [a for a in dataset["annotations"] if a.get("image_id") in kept]
    try:
        coco = load_coco_annotations(dataset, skip_invalid_annotations=skip_invalid_annotations)
        files = image_files(coco, images_dir)
    except ValueError as error:
        raise ValueError(f"{os.fspath(annotations)}: {error}") from None
    return coco, files


def builtin_scene_folders(output_dir, num_train: int | None, num_eval: int | None, image_size: int, seed: int = 0):
    """The built-in instance scenes as two COCO folders under `output_dir/builtin-scenes-coco/` (`train`: scenes
    0..N-1, `validation`: the next M, disjoint), written once (atomically) and reused: `(train_annotations,
    train_images, validation_annotations, validation_images)`. Call on the main process first."""
    from ...data.scenes import save_coco_scenes

    num_train = BUILTIN_TRAIN_IMAGES if num_train is None else int(num_train)
    num_eval = BUILTIN_EVAL_IMAGES if num_eval is None else int(num_eval)
    root = Path(output_dir) / BUILTIN_SCENES_FOLDER
    paths = []
    for name, count, start in (("train", num_train, 0), ("validation", num_eval, num_train)):
        folder = root / f"{name}-{count}-from-{start}-{image_size}px-seed{seed}"
        if not (folder / "instances.json").is_file():
            save_coco_scenes(folder, count, image_size=(image_size, image_size), seed=seed, start_index=start)
        paths += [folder / "instances.json", folder / "images"]
    return tuple(paths)


def resolve_id2label(coco, model_id2label: Mapping | None = None) -> dict[int, str]:
    """The trained classes: the categories of the training annotations by id order (label i = i-th category), or
    the source model's `id2label` when it names the same categories (its class layers then load as they are).

    Raises:
        `ValueError`: two categories with one name (labels are matched to categories by name).
    """
    names = [category["name"] for category in sorted(coco.dataset["categories"], key=lambda c: c["id"])]
    if len(set(names)) != len(names):
        raise ValueError(f"the training annotations' category names are not unique: {names}")
    if model_id2label and sorted(model_id2label.values()) == sorted(names):
        return {int(label): name for label, name in sorted(model_id2label.items(), key=lambda item: int(item[0]))}
    return dict(enumerate(names))


class CocoInstanceDataset(torch.utils.data.Dataset):
    """Training examples of a COCO split: one dict per image with at least one non-crowd annotation.

    Each example: `image_id`; `image` `(3, H, W)` uint8 pixels (`paca_hf.images` decoding, EXIF orientation applied;
    float32 on the 0..255 scale for 16-bit files); `boxes` `(n, 4)` float32 x1, y1, x2, y2 in pixels (COCO's
    `[x, y, w, h]`, clipped to the image); `class_labels` `(n,)` int64 (the model's label of the category, matched by
    name); `masks` `(n, H, W)` bool from the polygons or RLE (`COCO.annToMask`).

    Raises (on reading an example): `ValueError` naming the image when its file's size is not the annotated one.
    """

    def __init__(self, coco, files: Mapping[int, Path], id2label: Mapping[int, str]):
        self.coco = coco
        self.files = dict(files)
        label_of_name = {name: int(label) for label, name in id2label.items()}
        self.label_of_category = {
            c["id"]: label_of_name[c["name"]] for c in coco.dataset["categories"] if c["name"] in label_of_name
        }
        self.image_ids, self.skipped_empty, self.crowd = [], [], 0
        for image_id in sorted(coco.imgs):
            annotations = coco.imgToAnns.get(image_id, [])
            self.crowd += sum(1 for a in annotations if a.get("iscrowd", 0))
            if any(not a.get("iscrowd", 0) for a in annotations):
                self.image_ids.append(image_id)
            else:
                self.skipped_empty.append(image_id)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict:
        from ...images import open_image

        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self.files[image_id]
        try:
            pil = open_image(path)
        except ValueError as error:
            raise ValueError(f"image {image_id} ({path}): {error}") from None
        if pil.size != (info["width"], info["height"]):
            raise ValueError(
                f"image {image_id} ({path}) is {pil.size[0]} x {pil.size[1]} px, the annotations say "
                f"{info['width']} x {info['height']}"
            )
        height, width = info["height"], info["width"]
        annotations = [a for a in self.coco.imgToAnns[image_id] if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        masks = np.stack([self.coco.annToMask(a) for a in annotations]).astype(bool)
        return {
            "image_id": image_id,
            "image": decode_image(pil),
            "boxes": boxes.float(),
            "class_labels": torch.tensor([self.label_of_category[a["category_id"]] for a in annotations]),
            "masks": torch.from_numpy(masks),
        }

    def describe(self, split: str) -> str:
        """One log line: images used, images skipped for having no (non-crowd) annotation, crowd annotations left
        out."""
        skipped = ""
        if self.skipped_empty:
            shown = ", ".join(map(str, self.skipped_empty[:5])) + (", ..." if len(self.skipped_empty) > 5 else "")
            skipped = f"; skipped {len(self.skipped_empty)} image(s) without annotations (ids {shown})"
        return f"{split}: {len(self)} images{skipped}; {self.crowd} crowd annotation(s) left out of the targets"


def collate_instances(examples: Sequence[dict]) -> dict:
    """Lists (images differ in size): `image_ids`, `images`, `boxes`, `class_labels`, `masks`; augmentation,
    normalisation and padding happen in the training loop (`augmentation.DetectionTrainAugment`)."""
    return {
        "image_ids": [example["image_id"] for example in examples],
        "images": [example["image"] for example in examples],
        **{key: [example[key] for example in examples] for key in ("boxes", "class_labels", "masks")},
    }


__all__ = [
    "BUILTIN_SCENES",
    "CocoInstanceDataset",
    "builtin_scene_folders",
    "collate_instances",
    "load_coco_split",
    "resolve_id2label",
]
