"""Synthetic scene-parsing data in the ADE20k (`scene_parse_150`) schema, for demos and tests.

Each image shows a few filled shapes on a textured background. The SHAPE decides the class; colours,
textures, positions and sizes are drawn independently of it, so a model has to look at shape.

* column `image`: PIL RGB image; column `annotation`: PIL 'L' map with 0 = background ("other", ignored
  once labels are reduced) and 1..K = the classes of `SCENE_CLASSES` (reduced id = annotation - 1).
* `scene_instances` also gives each shape as an instance (class, box, mask) and `save_coco_scenes` writes scenes as
  a COCO instances folder, for detection and instance segmentation offline.
* Everything is a pure function of `(seed, image index)`: image i is the same whatever `num_images`
  is, and `start_index` picks a disjoint stretch (that is how the validation split is made).

    >>> from paca_hf.data.scenes import make_scenes, id2label
    >>> ds = make_scenes(8, image_size=(64, 64), seed=0)
    >>> sorted(ds.column_names)
    ['annotation', 'image']
    >>> id2label()[0]
    'disc'
"""

import json
import math
import os
from typing import Optional

import numpy as np
from PIL import Image


# Index i is the reduced label i, i.e. the annotation value i + 1. Annotation 0 is background ("other").
SCENE_CLASSES: tuple[str, ...] = ("disc", "square", "triangle", "bar", "ring")
BACKGROUND_NAME = "other"


def id2label(include_background: bool = False) -> dict[int, str]:
    """Class names by id. Default: reduced ids 0..K-1 (as a model config wants, like ADE20k's 150);
    with `include_background=True`: raw annotation ids, 0 = "other" and 1..K the shapes."""
    if include_background:
        return {0: BACKGROUND_NAME, **{i + 1: name for i, name in enumerate(SCENE_CLASSES)}}
    return dict(enumerate(SCENE_CLASSES))


def label2id(include_background: bool = False) -> dict[str, int]:
    """Inverse of `id2label`."""
    return {name: i for i, name in id2label(include_background).items()}


# ----------------------------------------------------------------------------------------------------------
# drawing


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int, channels: int) -> np.ndarray:
    """A smooth random field in [0, 1]: a coarse random grid upsampled bilinearly, (H, W, channels)."""
    grid = rng.random((cells + 1, cells + 1, channels))
    ys = np.linspace(0.0, cells, height)
    xs = np.linspace(0.0, cells, width)
    y0 = np.minimum(ys.astype(np.int64), cells - 1)
    x0 = np.minimum(xs.astype(np.int64), cells - 1)
    wy = (ys - y0)[:, None, None]
    wx = (xs - x0)[None, :, None]
    g00 = grid[y0][:, x0]
    g01 = grid[y0][:, x0 + 1]
    g10 = grid[y0 + 1][:, x0]
    g11 = grid[y0 + 1][:, x0 + 1]
    return (1 - wy) * ((1 - wx) * g00 + wx * g01) + wy * ((1 - wx) * g10 + wx * g11)


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A random zero-mean-ish luminance texture (H, W) in about [-1, 1]: stripes, checks or blotches."""
    kind = rng.integers(3)
    height, width = yy.shape
    if kind == 0:  # stripes of random orientation and period
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(4.0, 16.0)
        return np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period)
    if kind == 1:  # checks
        cell = rng.integers(3, 10)
        return np.where(((yy // cell).astype(np.int64) + (xx // cell).astype(np.int64)) % 2 == 0, 1.0, -1.0)
    return 2.0 * _smooth_field(rng, height, width, int(rng.integers(4, 9)), 1)[..., 0] - 1.0


def _shape_mask(cls: int, yy, xx, cy, cx, r, theta, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of shape class `cls` (0-based index into SCENE_CLASSES) of size scale r."""
    dy, dx = yy - cy, xx - cx
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * dx + s * dy, -s * dx + c * dy  # coordinates in the shape's own rotated frame
    name = SCENE_CLASSES[cls]
    if name == "disc":
        return dx * dx + dy * dy <= r * r
    if name == "square":
        half = 0.88 * r  # about the area of the disc
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if name == "triangle":
        big = 1.3 * r  # circumradius; equilateral triangle = intersection of 3 half-planes
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            ang = theta + math.pi / 2 + k * 2 * math.pi / 3  # outward normals of the three sides
            inside &= dx * math.cos(ang) + dy * math.sin(ang) <= big / 2
        return inside
    if name == "bar":  # horizontal: long along x (tilted by at most 8 degrees)
        tilt = rng.uniform(-8.0, 8.0) * math.pi / 180
        c, s = math.cos(tilt), math.sin(tilt)
        u, v = c * dx + s * dy, -s * dx + c * dy
        return (np.abs(u) <= 1.7 * r) & (np.abs(v) <= 0.32 * r)
    if name == "ring":
        outer = 1.1 * r
        inner = outer * rng.uniform(0.45, 0.65)
        d2 = dx * dx + dy * dy
        return (d2 <= outer * outer) & (d2 >= inner * inner)
    raise ValueError(cls)


def render_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (image uint8 (H, W, 3), annotation uint8 (H, W) with 0 = background, 1..K shapes)."""
    image, annotation, _ = _draw_scene(rng, height, width)
    return image, annotation


def _draw_scene(rng: np.random.Generator, height: int, width: int):
    """`render_scene`'s image and annotation, and the shapes drawn: `(class index, whole mask (H, W) bool)` in drawing
    order (a later shape covers an earlier one)."""
    shapes = []
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    # background: smooth random colour field, a texture of random strength, pixel noise
    base = 255.0 * _smooth_field(rng, height, width, int(rng.integers(1, 5)), 3)
    image = base + rng.uniform(10, 45) * _texture(rng, yy, xx)[..., None]
    image += rng.normal(0.0, rng.uniform(2, 12), size=image.shape)
    annotation = np.zeros((height, width), dtype=np.uint8)

    side = min(height, width)
    centres = []
    for _ in range(int(rng.integers(2, 6))):
        cls = int(rng.integers(len(SCENE_CLASSES)))
        r = side * rng.uniform(0.08, 0.2)
        if centres and rng.random() < 0.35:  # put it next to an earlier shape so that they overlap
            py, px = centres[int(rng.integers(len(centres)))]
            cy, cx = py + rng.uniform(-1.2, 1.2) * r, px + rng.uniform(-1.2, 1.2) * r
        else:
            cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
        centres.append((cy, cx))
        mask = _shape_mask(cls, yy, xx, cy, cx, r, rng.uniform(0, 2 * math.pi), rng)
        if not mask.any():
            continue
        # colour: uniform, redrawn (a few times) until it stands out from what lies below
        below = image[mask].mean(axis=0)
        colour = rng.uniform(0, 255, size=3)
        for _ in range(8):
            if np.abs(colour - below).sum() >= 90:
                break
            colour = rng.uniform(0, 255, size=3)
        texture = _texture(rng, yy, xx)[mask]  # (n,) values under the mask only
        fill = colour + rng.uniform(0, 30) * texture[:, None]
        fill += rng.normal(0.0, rng.uniform(0, 10), size=fill.shape)
        image[mask] = fill
        annotation[mask] = cls + 1
        shapes.append((cls, mask))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), annotation, shapes


def _scene(index: int, image_size, seed: int):
    """`_draw_scene` of scene number `index` of the stream `seed`."""
    height, width = (int(image_size), int(image_size)) if np.isscalar(image_size) else map(int, image_size)
    rng = np.random.default_rng([int(seed), int(index)])
    return _draw_scene(rng, height, width)


def scene_arrays(index: int, image_size: tuple[int, int] = (128, 128), seed: int = 0):
    """Arrays of scene number `index` of the stream `seed`: (image (H, W, 3) uint8, annotation (H, W) uint8)."""
    image, annotation, _ = _scene(index, image_size, seed)
    return image, annotation


def scene_instances(index: int, image_size: tuple[int, int] = (128, 128), seed: int = 0):
    """Scene number `index` of the stream `seed` with each shape as an instance: `(image, annotation, instances)`.

    `image` and `annotation` are `scene_arrays`'s. `instances` lists the shapes that can be seen, in drawing order,
    each a dict:

    * `label`: reduced class id (index into `SCENE_CLASSES`, i.e. the annotation value - 1);
    * `mask`: `(H, W)` bool, the pixels where the shape is seen. A later shape covers an earlier one, as in the
      annotation; a shape covered entirely is no instance. The masks do not overlap and their union is
      `annotation > 0`;
    * `box`: `(x_min, y_min, x_max, y_max)` ints, the mask's extent in pixel edges (the last column / row + 1), so
      that the box covers the mask's pixels as COCO's boxes do.
    """
    image, annotation, shapes = _scene(index, image_size, seed)
    instances, covered = [], np.zeros(annotation.shape, dtype=bool)
    for cls, mask in reversed(shapes):
        seen = mask & ~covered
        covered |= mask
        if seen.any():
            rows, cols = np.flatnonzero(seen.any(axis=1)), np.flatnonzero(seen.any(axis=0))
            box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
            instances.append({"label": cls, "mask": seen, "box": box})
    return image, annotation, instances[::-1]


def coco_categories():
    """COCO `categories` of the scenes: id = annotation value (1..K), name from `SCENE_CLASSES`."""
    return [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SCENE_CLASSES)]


def save_coco_scenes(
    path, num_images: int, image_size: tuple[int, int] = (128, 128), seed: int = 0, start_index: int = 0
) -> str:
    """Write scenes `start_index`, ... of the stream `seed` as a COCO instances folder, for detection offline.

    Layout: `path/instances.json` (COCO's instances format) and `path/images/{index:06d}.png`. The image id is the
    scene index; category ids are the annotation values (1..K, `coco_categories`); one annotation per instance of
    `scene_instances` (ids from 1), its mask as compressed RLE (rings have holes, which polygons cannot hold), its
    `bbox` the box as `[x, y, width, height]`, `area` the mask's pixel count, `iscrowd` 0. Needs pycocotools (the
    `detection` extra). The folder is written beside `path` and moved into place complete. Returns `path`.
    """
    from pycocotools import mask as mask_utils

    from ..file_utils import write_dir_atomically

    def write(folder):
        (folder / "images").mkdir()
        images, annotations = [], []
        for index in range(int(start_index), int(start_index) + int(num_images)):
            image, _, instances = scene_instances(index, image_size, seed)
            file_name = f"{index:06d}.png"
            Image.fromarray(image, mode="RGB").save(folder / "images" / file_name)
            height, width = image.shape[:2]
            images.append({"id": index, "file_name": file_name, "height": height, "width": width})
            for instance in instances:
                rle = mask_utils.encode(np.asfortranarray(instance["mask"], dtype=np.uint8))
                x1, y1, x2, y2 = instance["box"]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": index,
                        "category_id": instance["label"] + 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": int(instance["mask"].sum()),
                        "iscrowd": 0,
                        "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                    }
                )
        dataset = {
            "info": {"description": f"paca-hf synthetic scenes (seed {seed}, {len(images)} from scene {start_index})"},
            "images": images,
            "annotations": annotations,
            "categories": coco_categories(),
        }
        (folder / "instances.json").write_text(json.dumps(dataset), encoding="utf-8")

    write_dir_atomically(path, write)
    return os.fspath(path)


def features():
    """`datasets.Features` of the ADE20k schema: `image` and `annotation`, both `datasets.Image`."""
    import datasets

    return datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})


def make_scenes(num_images: int, image_size: tuple[int, int] = (128, 128), seed: int = 0, start_index: int = 0):
    """`datasets.Dataset` of `num_images` scenes (images `start_index`, ... of the stream `seed`).

    Columns: `image` (PIL RGB, size `image_size` = (H, W)) and `annotation` (PIL 'L', 0 = "other", 1..K).
    """
    import datasets

    images, annotations = [], []
    for i in range(int(num_images)):
        image, annotation = scene_arrays(start_index + i, image_size, seed)
        images.append(Image.fromarray(image, mode="RGB"))
        annotations.append(Image.fromarray(annotation, mode="L"))
    return datasets.Dataset.from_dict({"image": images, "annotation": annotations}, features=features())


def make_scene_splits(
    num_train: int = 200,
    num_validation: int = 50,
    image_size: tuple[int, int] = (128, 128),
    seed: int = 0,
    splits: Optional[dict[str, int]] = None,
):
    """`datasets.DatasetDict` with disjoint splits of the stream `seed` (default `train` then `validation`;
    `splits={"train": n, "validation": m, "test": k}` overrides), like `load_dataset("scene_parse_150")`."""
    import datasets

    splits = dict(splits) if splits is not None else {"train": num_train, "validation": num_validation}
    out, start = {}, 0
    for split, count in splits.items():
        out[split] = make_scenes(count, image_size=image_size, seed=seed, start_index=start)
        start += int(count)
    return datasets.DatasetDict(out)


def save_scenes_to_disk(
    path,
    num_train: int = 200,
    num_validation: int = 50,
    image_size: tuple[int, int] = (128, 128),
    seed: int = 0,
    splits: Optional[dict[str, int]] = None,
) -> str:
    """Write scenes as a local dataset folder that `datasets.load_dataset(path)` reads back.

    Layout: `path/data/{split}-00000-of-00001.parquet` (the Hub's parquet naming, from which the loader
    infers the splits) plus a README.md dataset card. Splits default to `train` and `validation`
    (disjoint scenes of the same stream); `splits={"train": n, "validation": m, "test": k}` overrides.
    The folder is written beside `path` and moved into place complete (replacing a folder already there).
    Returns `path`.
    """
    import datasets

    from ..file_utils import write_dir_atomically

    splits = dict(splits) if splits is not None else {"train": num_train, "validation": num_validation}

    def write(folder):
        data_dir = folder / "data"
        data_dir.mkdir()
        for split, ds in make_scene_splits(image_size=image_size, seed=seed, splits=splits).items():
            ds.to_parquet(str(data_dir / f"{split}-00000-of-00001.parquet"))
        (folder / "README.md").write_text(_dataset_card(splits, image_size, seed), encoding="utf-8")

    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        write_dir_atomically(path, write)
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    return os.fspath(path)


def _dataset_card(splits: dict[str, int], image_size, seed: int) -> str:
    names = "\n".join(f"- {i}: {n}" for i, n in id2label(include_background=True).items())
    file_lines = "\n".join(f"  - split: {s}\n    path: data/{s}-*" for s in splits)
    counts = ", ".join(f"{s}: {int(n)}" for s, n in splits.items())
    return f"""---
configs:
- config_name: default
  data_files:
{file_lines}
dataset_info:
  features:
  - name: image
    dtype: image
  - name: annotation
    dtype: image
---
# paca-hf synthetic scenes

Synthetic scene parsing in the ADE20k (`scene_parse_150`) schema, made by
`paca_hf.data.scenes.save_scenes_to_disk` (image size (H, W) = {tuple(image_size)}, seed {seed}; {counts}).
The shape, not the colour, decides the class. `annotation` values:
{names}
"""


__all__ = [
    "SCENE_CLASSES",
    "BACKGROUND_NAME",
    "coco_categories",
    "id2label",
    "label2id",
    "features",
    "make_scene_splits",
    "make_scenes",
    "render_scene",
    "save_coco_scenes",
    "save_scenes_to_disk",
    "scene_arrays",
    "scene_instances",
]
