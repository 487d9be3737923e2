"""See the clusters: pictures of PaCa-ViT's patch-to-cluster assignments and their agreement with labels.

* [`render_clusters`] draws, for one image, every stage's cluster assignment (and the segmentation head's) as one
  PIL image: a grid whose rows are the stages (then the head) and whose columns are
  `image | hard cluster map | soft heatmaps of the top-k clusters`.
* [`cluster_label_nmi`] is the normalised mutual information between a hard cluster map and a label map.
* [`stage_cluster_nmi`] pools that over a segmentation dataset (ADE20k schema), per stage and for the head.

Conventions (the same everywhere in this module):

* **Soft assignment.** A stage's `cluster_assignments` tensor `(batch, clusters, height, width)` is normalised over
  the patches: for each cluster it sums to 1 over `height * width`. The segmentation head's assignment is
  `softmax(cluster_logits)` over its pixels, one cluster per class, normalised the same way.
* **Hard map.** Each patch gets the cluster with the largest assignment value at that patch, i.e. the argmax over
  the cluster axis of the patch-normalised assignment (the cluster in which the patch holds the largest share).
  This is *not* the argmax of a per-patch distribution: a cluster whose mass is spread over many patches has
  small values everywhere and may win no patch at all. Ties go to the lowest cluster index.
* **Most used clusters.** Ranked by the number of patches they win in the hard map (ties: lowest index). The total
  mass cannot rank them: it is exactly 1 for every cluster.

Only PIL and NumPy are used for drawing (matplotlib is not needed).
"""

from __future__ import annotations

import colorsys
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


# ImageNet statistics, the default normalisation when no image processor is given.
DEFAULT_IMAGE_MEAN = (0.485, 0.456, 0.406)
DEFAULT_IMAGE_STD = (0.229, 0.224, 0.225)

# Grid geometry of `render_clusters`: every cell is a label band of LABEL_HEIGHT pixels above a picture of
# (cell height, cell width) pixels; cells and the outer border are separated by PADDING pixels. So the picture is
#   width  = columns * cell_width + (columns + 1) * PADDING,   columns = 2 + top_k
#   height = rows * (LABEL_HEIGHT + cell_height) + (rows + 1) * PADDING.
LABEL_HEIGHT = 14
PADDING = 2
BACKGROUND = (255, 255, 255)
# Weight of the hard map's colours over the (greyed) image, and the largest weight of a heatmap.
HARD_MAP_OPACITY = 0.75
HEATMAP_OPACITY = 0.85

_GOLDEN_RATIO_CONJUGATE = (math.sqrt(5.0) - 1.0) / 2.0
# (saturation, value) cycled through so that neighbouring indices differ in more than hue.
_SATURATION_VALUE = ((0.85, 0.95), (0.55, 0.85), (0.95, 0.65))
# Heatmap colours ("hot"-like): dark red -> red -> orange -> yellow -> white, at equally spaced values.
_HEAT_ANCHORS = np.array(
    [[40, 0, 0], [200, 0, 0], [255, 120, 0], [255, 230, 40], [255, 255, 255]], dtype=np.float64
)

HEAD_KEY = "head"


# ----------------------------------------------------------------------------------------------------------
# colours


def cluster_palette(num_colors: int) -> np.ndarray:
    """Deterministic palette `(num_colors, 3)` uint8: hues step by the golden ratio (so consecutive clusters get
    far-apart hues), saturation / value cycle through three levels. Colour i does not depend on `num_colors`."""
    colors = np.empty((max(int(num_colors), 0), 3), dtype=np.uint8)
    for index in range(len(colors)):
        hue = (index * _GOLDEN_RATIO_CONJUGATE) % 1.0
        saturation, value = _SATURATION_VALUE[index % len(_SATURATION_VALUE)]
        colors[index] = [round(255 * channel) for channel in colorsys.hsv_to_rgb(hue, saturation, value)]
    return colors


def heat_colors(values: np.ndarray) -> np.ndarray:
    """Colours `(..., 3)` float64 in [0, 255] of values in [0, 1] (clipped), on a black-red-yellow-white scale."""
    scaled = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * (len(_HEAT_ANCHORS) - 1)
    low = np.minimum(np.floor(scaled).astype(np.int64), len(_HEAT_ANCHORS) - 2)
    fraction = (scaled - low)[..., None]
    return (1.0 - fraction) * _HEAT_ANCHORS[low] + fraction * _HEAT_ANCHORS[low + 1]


# ----------------------------------------------------------------------------------------------------------
# assignments


def hard_cluster_map(assignment) -> np.ndarray:
    """Hard map of a soft assignment `(..., clusters, height, width)` (normalised over the patches): for each patch
    the index of the cluster with the largest assignment there (argmax over the cluster axis; ties -> lowest
    index). Returns int64 `(..., height, width)`."""
    if isinstance(assignment, torch.Tensor):
        assignment = assignment.detach().float().cpu().numpy()
    assignment = np.asarray(assignment)
    if assignment.ndim < 3:
        raise ValueError(f"an assignment needs (..., clusters, height, width), got shape {assignment.shape}")
    return assignment.argmax(axis=-3).astype(np.int64)


def top_clusters(hard_map: np.ndarray, num_clusters: int, top_k: int) -> list[tuple[int, int]]:
    """The `top_k` most used clusters of a hard map: `[(cluster, number of patches), ...]`, by decreasing number of
    patches won (ties: lowest cluster index). Clusters that win no patch are listed last (with count 0)."""
    counts = np.bincount(np.asarray(hard_map).reshape(-1), minlength=num_clusters)[:num_clusters]
    order = sorted(range(num_clusters), key=lambda cluster: (-int(counts[cluster]), cluster))
    return [(cluster, int(counts[cluster])) for cluster in order[: max(int(top_k), 0)]]


@torch.no_grad()
def compute_cluster_assignments(model, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    """Soft assignments of a PaCa-ViT model for a batch, float32 on the CPU, each `(batch, clusters, h, w)` and
    normalised over the patches: `"stage{i}"` for every stage with clusters (1-based, in order), then `"head"` (the
    segmentation head's `softmax(cluster_logits)` over pixels, one cluster per class) when the model returns
    `cluster_logits`. The model is run in eval mode and its training flag restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters(), None)
        if parameter is not None:
            pixel_values = pixel_values.to(device=parameter.device, dtype=parameter.dtype)
        outputs = model(pixel_values=pixel_values, output_cluster_assignments=True)
    finally:
        model.train(was_training)
    stage_assignments = getattr(outputs, "cluster_assignments", None)
    if stage_assignments is None:
        raise ValueError(
            f"{type(model).__name__} returned no `cluster_assignments`; use a PaCa-ViT model "
            "(PaCaViTModel, PaCaViTForImageClassification or PaCaViTForSemanticSegmentation)."
        )
    result = {}
    for index, assignment in enumerate(stage_assignments, start=1):
        if assignment is not None:
            result[f"stage{index}"] = assignment.detach().float().cpu()
    cluster_logits = getattr(outputs, "cluster_logits", None)
    if cluster_logits is not None:
        logits = cluster_logits.detach().float().cpu()
        result[HEAD_KEY] = logits.flatten(2).softmax(dim=-1).unflatten(2, logits.shape[-2:])
    return result


def _head_names(model, num_clusters: int) -> list[str]:
    id2label = getattr(model.config, "id2label", None) or {}
    names = []
    for index in range(num_clusters):
        name = id2label.get(index, id2label.get(str(index)))
        names.append(str(name) if name is not None else f"class {index}")
    return names


# ----------------------------------------------------------------------------------------------------------
# inputs


def _to_pil(image) -> Image.Image:
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            opened.load()
            return opened.convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected a PIL image, a path or an (H, W[, C]) array, got shape {array.shape}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    array = array[..., :3]
    if array.dtype != np.uint8:
        array = np.asarray(array, dtype=np.float64)
        array = array * 255.0 if array.max(initial=0.0) <= 1.0 else array
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return Image.fromarray(array, mode="RGB")


def _normalise(image: Image.Image) -> torch.Tensor:
    """The fallback preprocessing: the image at its own size, scaled to [0, 1], ImageNet-normalised; (1, 3, H, W)."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.asarray(DEFAULT_IMAGE_MEAN, np.float32)) / np.asarray(DEFAULT_IMAGE_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


def _denormalise(pixel_values: torch.Tensor, image_processor) -> np.ndarray:
    """Undo an image processor's rescale / normalise: what the model saw, as (H, W, 3) uint8."""
    array = pixel_values.detach().float().cpu().numpy().transpose(1, 2, 0).astype(np.float64)
    if image_processor is None or getattr(image_processor, "do_normalize", False):
        mean = DEFAULT_IMAGE_MEAN if image_processor is None else getattr(image_processor, "image_mean", None)
        std = DEFAULT_IMAGE_STD if image_processor is None else getattr(image_processor, "image_std", None)
        if mean is not None and std is not None:
            array = array * np.asarray(std, np.float64).reshape(-1)[: array.shape[-1]]
            array = array + np.asarray(mean, np.float64).reshape(-1)[: array.shape[-1]]
    rescale = image_processor is None or getattr(image_processor, "do_rescale", False)
    factor = 1 / 255 if image_processor is None else getattr(image_processor, "rescale_factor", 1 / 255)
    if rescale and factor:
        array = array / factor
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.clip(np.rint(array[..., :3]), 0, 255).astype(np.uint8)


def prepare_image(image, image_processor=None) -> tuple[torch.Tensor, np.ndarray]:
    """`(pixel_values (1, C, H, W), picture (H, W, 3) uint8)` of one image: with an image processor, its
    `pixel_values` and those pixels de-normalised (exactly what the model sees, crops included); without one, the
    image at its own size, ImageNet-normalised."""
    picture = _to_pil(image)
    if image_processor is None:
        return _normalise(picture), np.asarray(picture)
    pixel_values = image_processor(picture, return_tensors="pt")["pixel_values"]
    if pixel_values.ndim == 3:
        pixel_values = pixel_values[None]
    return pixel_values[:1], _denormalise(pixel_values[0], image_processor)


# ----------------------------------------------------------------------------------------------------------
# drawing


def _resize_nearest(index_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer map to (height, width), each output pixel reading the map cell its
    centre falls in."""
    height, width = size
    rows = np.minimum(((np.arange(height) + 0.5) * index_map.shape[0] / height).astype(np.int64), index_map.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * index_map.shape[1] / width).astype(np.int64), index_map.shape[1] - 1)
    return index_map[rows[:, None], cols[None, :]]


def _resize_bilinear(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to (height, width) (PIL, mode "F")."""
    height, width = size
    resized = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F").resize((width, height), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float64)


def _grey(picture: np.ndarray) -> np.ndarray:
    luminance = picture.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.repeat(luminance[..., None], 3, axis=-1)


def _hard_tile(hard_map: np.ndarray, picture: np.ndarray, palette: np.ndarray) -> np.ndarray:
    colors = palette[_resize_nearest(hard_map, picture.shape[:2])].astype(np.float64)
    blended = HARD_MAP_OPACITY * colors + (1.0 - HARD_MAP_OPACITY) * _grey(picture)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _heat_tile(soft_map: np.ndarray, picture: np.ndarray) -> np.ndarray:
    values = _resize_bilinear(soft_map, picture.shape[:2])
    low, high = values.min(initial=np.inf), values.max(initial=-np.inf)
    values = (values - low) / (high - low) if high > low else np.zeros_like(values)
    weight = (HEATMAP_OPACITY * values)[..., None]
    blended = weight * heat_colors(values) + (1.0 - weight) * 0.6 * _grey(picture)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _font():
    try:
        return ImageFont.load_default()
    except OSError:  # pragma: no cover - Pillow without its bundled font
        return None


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".."


def _compose(rows: list[list[tuple[str, np.ndarray | None]]], columns: int, cell: tuple[int, int]) -> Image.Image:
    cell_height, cell_width = cell
    width = columns * cell_width + (columns + 1) * PADDING
    height = len(rows) * (LABEL_HEIGHT + cell_height) + (len(rows) + 1) * PADDING
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font()
    for row_index, row in enumerate(rows):
        top = PADDING + row_index * (LABEL_HEIGHT + cell_height + PADDING)
        for column_index, (label, tile) in enumerate(row):
            left = PADDING + column_index * (cell_width + PADDING)
            if label:
                draw.text((left + 1, top + 1), _fit(draw, label, cell_width - 2, font), fill=(0, 0, 0), font=font)
            if tile is not None:
                canvas.paste(Image.fromarray(tile, mode="RGB"), (left, top + LABEL_HEIGHT))
    return canvas


def _cell_size(picture_size: tuple[int, int], cell_size: int | None) -> tuple[int, int]:
    height, width = picture_size
    longest = max(height, width)
    target = int(cell_size) if cell_size is not None else min(max(longest, 128), 256)
    if target < 1:
        raise ValueError(f"`cell_size` must be a positive number of pixels, got {cell_size}")
    scale = target / longest
    return max(1, round(height * scale)), max(1, round(width * scale))


def render_clusters(
    model,
    image,
    stage: int | str | None = None,
    top_k: int = 4,
    image_processor=None,
    cell_size: int | None = None,
) -> Image.Image:
    """Picture of a PaCa-ViT model's clusters for one image.

    Args:
        model: a PaCa-ViT model (`PaCaViTModel`, `PaCaViTForImageClassification` or
            `PaCaViTForSemanticSegmentation`).
        image: a PIL image, a path, or an `(H, W[, C])` array.
        stage: `None` for every stage that has clusters (plus the head of a segmentation model); an int N for
            stage N only (1-based); `"head"` for the segmentation head only.
        top_k: number of heatmap columns: the soft assignments of the `top_k` most used clusters (most patches won
            in the hard map, see the module docstring), each stretched to its own [min, max] range (so even a
            nearly uniform assignment shows where it is larger) and overlaid on the image.
            Rows with fewer clusters leave the remaining cells empty.
        image_processor: turns the image into `pixel_values` (e.g. `PaCaViTImageProcessor`); the picture then shows
            the processed pixels (crop included). Without one the whole image is fed at its own size with ImageNet
            normalisation (mind the cost for large images).
        cell_size: longer side, in pixels, of every picture cell (default: the input's longer side clipped to
            [128, 256]).

    Returns:
        One RGB PIL image: a grid with one row per stage with clusters (in order) and, for a segmentation model, a
        last row for its head (one cluster per class, named after `config.id2label`); columns are
        `image | hard cluster map | top_k heatmaps`, each cell with a label band on top. The hard map colours each
        patch by its argmax cluster (nearest upsampling, palette of `cluster_palette`); heatmaps are upsampled
        bilinearly. The size follows `LABEL_HEIGHT` and `PADDING` (see their comment).
    """
    top_k = int(top_k)
    if top_k < 0:
        raise ValueError(f"`top_k` must be >= 0, got {top_k}")
    config = model.config
    stage_keys = [f"stage{index}" for index, count in enumerate(config.num_clusters, start=1) if count > 0]
    has_head = getattr(model, "decode_head", None) is not None
    if stage is None:
        keys = stage_keys + ([HEAD_KEY] if has_head else [])
    elif isinstance(stage, str) and stage.lower() == HEAD_KEY:
        if not has_head:
            raise ValueError(f"{type(model).__name__} has no segmentation head with clusters")
        keys = [HEAD_KEY]
    else:
        try:
            index = int(stage)
        except (TypeError, ValueError):
            raise ValueError(f"`stage` must be None, a stage number (1-based) or 'head', got {stage!r}") from None
        if not 1 <= index <= len(config.num_clusters):
            raise ValueError(f"`stage` must be between 1 and {len(config.num_clusters)}, got {index}")
        if f"stage{index}" not in stage_keys:
            with_clusters = [int(key[len("stage") :]) for key in stage_keys]
            raise ValueError(f"stage {index} has no clusters (num_clusters 0); stages with clusters: {with_clusters}")
        keys = [f"stage{index}"]
    if not keys:
        raise ValueError("this model has no stage with clusters (num_clusters is 0 everywhere) and no PaCa head")

    pixel_values, picture = prepare_image(image, image_processor)
    assignments = compute_cluster_assignments(model, pixel_values)
    keys = [key for key in keys if key in assignments]
    cell = _cell_size(picture.shape[:2], cell_size)
    shown = np.asarray(Image.fromarray(picture, mode="RGB").resize((cell[1], cell[0]), Image.BILINEAR))
    rows = []
    for key in keys:
        soft = assignments[key][0].numpy()
        num_clusters, height, width = soft.shape
        hard = hard_cluster_map(soft)
        used = int(np.unique(hard).size)
        if key == HEAD_KEY:
            names = _head_names(model, num_clusters)
            title = f"head: {num_clusters} classes {height}x{width}"
        else:
            names = [f"cluster {cluster}" for cluster in range(num_clusters)]
            title = f"stage {key[len('stage'):]}: {num_clusters} cl. {height}x{width}"
        hard_tile = _hard_tile(hard, shown, cluster_palette(num_clusters))
        row = [(title, shown), (f"hard: {used}/{num_clusters} used", hard_tile)]
        for cluster, count in top_clusters(hard, num_clusters, top_k):
            share = 100.0 * count / hard.size
            row.append((f"{names[cluster]} {share:.0f}%", _heat_tile(soft[cluster], shown)))
        row += [("", None)] * (2 + top_k - len(row))
        rows.append(row)
    return _compose(rows, 2 + top_k, cell)


# ----------------------------------------------------------------------------------------------------------
# normalised mutual information


def contingency_table(cluster_map, label_map, ignore_index: int | None = 255) -> np.ndarray:
    """Counts `(clusters, labels)` of pixel pairs, over the pixels whose label is not `ignore_index`; rows and
    columns are the distinct cluster ids / labels present, in increasing order."""
    clusters = np.asarray(cluster_map)
    labels = np.asarray(label_map)
    if clusters.shape != labels.shape:
        raise ValueError(f"cluster map and label map must have the same shape, got {clusters.shape} and {labels.shape}")
    clusters, labels = clusters.reshape(-1), labels.reshape(-1)
    if ignore_index is not None:
        keep = labels != ignore_index
        clusters, labels = clusters[keep], labels[keep]
    cluster_ids, cluster_index = np.unique(clusters, return_inverse=True)
    label_ids, label_index = np.unique(labels, return_inverse=True)
    counts = np.bincount(
        cluster_index.reshape(-1) * len(label_ids) + label_index.reshape(-1), minlength=len(cluster_ids) * len(label_ids)
    )
    return counts.reshape(len(cluster_ids), len(label_ids))


def nmi_from_contingency(table) -> float:
    """NMI of a contingency table of counts, with the arithmetic-mean normalisation (scikit-learn's default):
    `NMI = 2 I(X; Y) / (H(X) + H(Y))`, entropies in nats (the base cancels out).

    Degenerate cases: both variables constant (H(X) = H(Y) = 0) -> 1.0 (the partitions are identical); only one
    constant -> 0.0 (it carries no information; the formula gives 0). An empty table (no counted pixel) raises
    `ValueError`. The result is clipped to [0, 1] against rounding.
    """
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 2:
        raise ValueError(f"a contingency table is 2-dimensional, got shape {table.shape}")
    if np.any(table < 0):
        raise ValueError("a contingency table holds counts >= 0")
    total = table.sum()
    if total <= 0:
        raise ValueError("no pixel to compare (every label is ignore_index, or the maps are empty)")
    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    rows, columns = table.sum(axis=1), table.sum(axis=0)
    if len(rows) == 1 and len(columns) == 1:
        return 1.0
    if len(rows) == 1 or len(columns) == 1:
        return 0.0

    def entropy(counts):
        return float(-np.sum(counts / total * np.log(counts / total)))

    nonzero = np.nonzero(table)
    joint = table[nonzero]
    # I = sum_ij n_ij / N * log(n_ij N / (a_i b_j)); exactly 0 when every n_ij N == a_i b_j.
    mutual_information = float(np.sum(joint / total * np.log(joint * total / (rows[nonzero[0]] * columns[nonzero[1]]))))
    mutual_information = max(mutual_information, 0.0)
    return float(min(max(2.0 * mutual_information / (entropy(rows) + entropy(columns)), 0.0), 1.0))


def cluster_label_nmi(cluster_map, label_map, ignore_index: int | None = 255) -> float:
    """Normalised mutual information between a hard cluster map and a ground-truth label map of the same shape,
    over the pixels whose label is not `ignore_index` (`None`: all pixels). `NMI = 2 I(X; Y) / (H(X) + H(Y))` (the
    arithmetic-mean normalisation, scikit-learn's default); invariant to relabelling either map; 1.0 when both are
    constant, 0.0 when exactly one is (see [`nmi_from_contingency`])."""
    return nmi_from_contingency(contingency_table(cluster_map, label_map, ignore_index))


def downsample_labels(label_map, size: tuple[int, int], ignore_index: int = 255) -> np.ndarray:
    """A label map `(H, W)` at resolution `size = (h, w)`.

    When `H >= h` and `W >= w`, by mode: output pixel (i, j) gets the most frequent label among the input pixels
    (y, x) with `y * h // H == i` and `x * w // W == j` (an exact block partition, blocks of near-equal size),
    ignoring `ignore_index` (ties: smallest label; a block of ignored pixels only is `ignore_index`). Otherwise
    (upsampling in some direction), nearest neighbour: each output pixel reads the input pixel under its centre.
    """
    labels = np.asarray(label_map).astype(np.int64)
    if labels.ndim != 2:
        raise ValueError(f"a label map is (height, width), got shape {labels.shape}")
    height, width = labels.shape
    out_height, out_width = (int(value) for value in size)
    if height < out_height or width < out_width:
        return _resize_nearest(labels, (out_height, out_width))
    rows = np.arange(height) * out_height // height
    cols = np.arange(width) * out_width // width
    block = (rows[:, None] * out_width + cols[None, :]).reshape(-1)
    flat = labels.reshape(-1)
    valid = flat != ignore_index
    result = np.full(out_height * out_width, ignore_index, dtype=np.int64)
    if not valid.any():
        return result.reshape(out_height, out_width)
    label_ids, label_index = np.unique(flat[valid], return_inverse=True)
    counts = np.bincount(
        block[valid] * len(label_ids) + label_index.reshape(-1), minlength=out_height * out_width * len(label_ids)
    ).reshape(out_height * out_width, len(label_ids))
    has_valid = counts.sum(axis=1) > 0
    result[has_valid] = label_ids[counts[has_valid].argmax(axis=1)]
    return result.reshape(out_height, out_width)


def reduce_labels(label_map, ignore_index: int = 255) -> np.ndarray:
    """ADE20k label reduction: 0 ("other") -> `ignore_index`, every other label minus 1 (`ignore_index` stays)."""
    labels = np.asarray(label_map).astype(np.int64)
    reduced = labels - 1
    reduced[(labels == 0) | (labels == ignore_index)] = ignore_index
    return reduced


def _add_counts(table: np.ndarray | None, clusters: np.ndarray, labels: np.ndarray, num_clusters: int, ignore_index):
    clusters, labels = clusters.reshape(-1), labels.reshape(-1)
    keep = labels != ignore_index
    clusters, labels = clusters[keep], labels[keep]
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be >= 0 (or ignore_index {ignore_index}), found {labels.min()}")
    num_labels = int(labels.max()) + 1 if labels.size else 0
    if table is None:
        table = np.zeros((num_clusters, 0), dtype=np.int64)
    if num_labels > table.shape[1]:
        table = np.pad(table, ((0, 0), (0, num_labels - table.shape[1])))
    if labels.size:
        table += np.bincount(clusters * table.shape[1] + labels, minlength=table.size).reshape(table.shape)
    return table


def _batches(data, image_processor, batch_size: int, reduce: bool, ignore_index: int, num_images: int | None):
    """(pixel_values, labels (B, H, W) int64) from examples {image, annotation} or batches {pixel_values, labels}."""
    remaining = None if num_images is None else int(num_images)
    pending = []

    def flush():
        if not pending:
            return
        images = [_to_pil(example["image"]) for example in pending]
        annotations = [np.asarray(example["annotation"]) for example in pending]
        pending.clear()
        if image_processor is None:
            for image, annotation in zip(images, annotations):
                labels = reduce_labels(annotation, ignore_index) if reduce else annotation.astype(np.int64)
                yield _normalise(image), torch.from_numpy(labels)[None]
            return
        encoded = image_processor(
            images, segmentation_maps=annotations, do_reduce_labels=reduce, return_tensors="pt"
        )
        yield encoded["pixel_values"], torch.as_tensor(encoded["labels"])

    if remaining is not None and remaining <= 0:
        return
    for item in data:
        if isinstance(item, Mapping) and "pixel_values" in item:
            yield from flush()
            pixel_values, labels = torch.as_tensor(item["pixel_values"]), torch.as_tensor(item["labels"])
            if pixel_values.ndim == 3:
                pixel_values, labels = pixel_values[None], labels[None]
            if remaining is not None:
                pixel_values, labels = pixel_values[:remaining], labels[:remaining]
                remaining -= len(pixel_values)
            yield pixel_values, labels
            if remaining is not None and remaining <= 0:
                return
            continue
        if not (isinstance(item, Mapping) and "image" in item and "annotation" in item):
            raise ValueError(
                "expected examples with `image` and `annotation` (ADE20k schema) or batches with `pixel_values` and "
                f"`labels`, got {type(item).__name__}"
                + (f" with keys {sorted(item)}" if isinstance(item, Mapping) else "")
            )
        pending.append(item)
        if remaining is not None:
            remaining -= 1
        if len(pending) >= batch_size:
            yield from flush()
        if remaining is not None and remaining <= 0:
            break
    yield from flush()


def stage_cluster_nmi(
    model,
    data: Iterable,
    image_processor=None,
    num_images: int | None = None,
    batch_size: int = 4,
    do_reduce_labels: bool = True,
    ignore_index: int = 255,
    return_tables: bool = False,
):
    """Per stage (and for the segmentation head), the NMI between hard cluster maps and ground-truth labels over a
    segmentation dataset.

    Args:
        model: a PaCa-ViT model.
        data: examples in the ADE20k schema (`{"image": PIL, "annotation": PIL "L" with 0 = other}`, e.g. a
            `datasets.Dataset`), or ready batches `{"pixel_values": (B, C, H, W), "labels": (B, H, W)}` whose labels
            are already reduced (`ignore_index` for pixels to skip); both may be mixed.
        image_processor: makes `pixel_values` and resizes / crops the annotations alongside (its `segmentation_maps`
            argument); without one each image is fed at its own size (ImageNet normalisation). Examples are batched
            by `batch_size`, so the processor must produce equal sizes (its default center crop does).
        num_images: use at most this many images.
        do_reduce_labels: reduce annotations as ADE20k does (0 -> `ignore_index`, others - 1). Not applied to
            ready batches.
        ignore_index: label of pixels left out.
        return_tables: also return the pooled contingency tables.

    For each stage with clusters, the hard cluster map (argmax over clusters, see the module docstring) is compared
    with the labels downsampled to that stage's resolution by [`downsample_labels`] (mode pooling); `"head"` does
    the same with the head's assignment `softmax(cluster_logits)` at 1/4 resolution. The contingency table is
    pooled over all images and the NMI ([`nmi_from_contingency`]) computed once per key.

    Returns:
        `{"stage1": nmi, ..., "head": nmi}` (keys of stages with clusters, then "head" for a segmentation model),
        and with `return_tables=True` also `{key: table (clusters, labels)}`.
    """
    batch_size = max(int(batch_size), 1)
    tables: dict[str, np.ndarray] = {}
    for pixel_values, labels in _batches(data, image_processor, batch_size, do_reduce_labels, ignore_index, num_images):
        labels = labels.cpu().numpy().astype(np.int64)
        if labels.ndim == 2:
            labels = labels[None]
        for key, assignment in compute_cluster_assignments(model, pixel_values).items():
            hard = hard_cluster_map(assignment)
            for image_hard, image_labels in zip(hard, labels):
                small = downsample_labels(image_labels, image_hard.shape, ignore_index)
                tables[key] = _add_counts(tables.get(key), image_hard, small, assignment.shape[1], ignore_index)
    if not tables:
        raise ValueError("no image was evaluated (empty data, or a model without clusters)")
    scores = {key: nmi_from_contingency(table) for key, table in tables.items()}
    return (scores, tables) if return_tables else scores


# ----------------------------------------------------------------------------------------------------------
# loading (for the scripts)


def auto_model_class(architectures: Sequence[str] | None):
    """The Auto class for a config's `architectures`: semantic segmentation, image classification, or the bare
    model."""
    from transformers import AutoModel, AutoModelForImageClassification, AutoModelForSemanticSegmentation

    names = list(architectures or [])
    if any(name.endswith("ForSemanticSegmentation") for name in names):
        return AutoModelForSemanticSegmentation
    if any(name.endswith("ForImageClassification") for name in names):
        return AutoModelForImageClassification
    return AutoModel


def load_model_and_processor(name_or_path: str, **kwargs):
    """`(model in eval mode, image processor)` of a folder or Hub id, with the Auto class picked from
    `config.architectures`. A folder without a saved processor gets `PaCaViTImageProcessor()` (with a warning)."""
    import paca_hf  # noqa: F401  (registers the PaCa-ViT Auto classes, image processor included)
    from transformers import AutoConfig, AutoImageProcessor

    config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    model = auto_model_class(getattr(config, "architectures", None)).from_pretrained(name_or_path, **kwargs)
    try:
        image_processor = AutoImageProcessor.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError, KeyError):
        from .image_processing_pacavit import PaCaViTImageProcessor

        warnings.warn(f"No image processor saved in {name_or_path!r}; using PaCaViTImageProcessor defaults.")
        image_processor = PaCaViTImageProcessor()
    return model.eval(), image_processor


__all__ = [
    "cluster_label_nmi",
    "cluster_palette",
    "compute_cluster_assignments",
    "contingency_table",
    "downsample_labels",
    "hard_cluster_map",
    "load_model_and_processor",
    "nmi_from_contingency",
    "reduce_labels",
    "render_clusters",
    "stage_cluster_nmi",
    "top_clusters",
]
