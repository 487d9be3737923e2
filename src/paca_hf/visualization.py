"""See the clusters: pictures of PaCa-ViT's patch-to-cluster assignments and their agreement with labels.

* [`render_clusters`] draws, for one image, every stage's cluster assignment (and the segmentation head's) as one
  PIL image: a grid whose rows are the stages (then the head) and whose columns are
  `image | hard cluster map | soft heatmaps of the top-k clusters`.
* The agreement of the clusters with labels (normalised mutual information) is a metric:
  `paca_hf.metrics.cluster_nmi` (`cluster_label_nmi`, `stage_cluster_nmi`).

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
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .images import load_image


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
_HEAT_ANCHORS = np.array([[40, 0, 0], [200, 0, 0], [255, 120, 0], [255, 230, 40], [255, 255, 255]], dtype=np.float64)

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
    `cluster_logits`. A `PaCaViTBackbone` gives its stages' assignments too. The model is run in eval mode and its
    training flag restored afterwards."""
    from .modeling_pacavit import PaCaViTBackbone, PaCaViTModel

    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters(), None)
        if parameter is not None:
            pixel_values = pixel_values.to(device=parameter.device, dtype=parameter.dtype)
        # A backbone returns only feature maps; its PaCaViTModel forward has the assignments.
        forward = PaCaViTModel.forward.__get__(model) if isinstance(model, PaCaViTBackbone) else model
        outputs = forward(pixel_values=pixel_values, output_cluster_assignments=True)
    finally:
        model.train(was_training)
    return assignments_from_outputs(outputs, model)


def assignments_from_outputs(outputs, model=None) -> dict[str, torch.Tensor]:
    """The soft assignments in a PaCa-ViT model's outputs (called with `output_cluster_assignments=True`), as
    [`compute_cluster_assignments`] returns them: `"stage{i}"` `(batch, clusters, h, w)` for every stage with clusters,
    then `"head"` for a PaCa segmentation head; float32 on the CPU. `ValueError` when the outputs hold none."""
    stage_assignments = getattr(outputs, "cluster_assignments", None)
    if stage_assignments is None:
        name = "the model" if model is None else type(model).__name__
        raise ValueError(
            f"{name} returned no `cluster_assignments`; use a PaCa-ViT model "
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


def normalize_image(image) -> torch.Tensor:
    """The preprocessing without an image processor: the image (any input `paca_hf.images.load_image` takes) at its
    own size, scaled to [0, 1] and normalised with the ImageNet mean / std; `(1, 3, H, W)` float32."""
    array = np.asarray(load_image(image), dtype=np.float32) / 255.0
    array = (array - np.asarray(IMAGENET_DEFAULT_MEAN, np.float32)) / np.asarray(IMAGENET_DEFAULT_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


def _denormalise(pixel_values: torch.Tensor, image_processor) -> np.ndarray:
    """Undo an image processor's rescale / normalise: what the model saw, as (H, W, 3) uint8."""
    array = pixel_values.detach().float().cpu().numpy().transpose(1, 2, 0).astype(np.float64)
    if image_processor is None or getattr(image_processor, "do_normalize", False):
        mean = IMAGENET_DEFAULT_MEAN if image_processor is None else getattr(image_processor, "image_mean", None)
        std = IMAGENET_DEFAULT_STD if image_processor is None else getattr(image_processor, "image_std", None)
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
    """`(pixel_values (1, C, H, W), picture (H, W, 3) uint8)` of one image (any input `paca_hf.images` decodes: PIL
    image, path, array, tensor). With an image processor: its `pixel_values` and those pixels de-normalised (exactly
    what the model sees, crops included); without one: [`normalize_image`] and the 8-bit image itself."""
    if image_processor is None:
        picture = load_image(image)
        return normalize_image(picture), np.asarray(picture)
    pixel_values = image_processor(image, return_tensors="pt")["pixel_values"]
    if pixel_values.ndim == 3:
        pixel_values = pixel_values[None]
    return pixel_values[:1], _denormalise(pixel_values[0], image_processor)


# ----------------------------------------------------------------------------------------------------------
# drawing


def resize_nearest(index_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer map to (height, width), each output pixel reading the map cell its
    centre falls in."""
    height, width = size
    rows = np.minimum(
        ((np.arange(height) + 0.5) * index_map.shape[0] / height).astype(np.int64), index_map.shape[0] - 1
    )
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


def draw_hard_map(hard_map: np.ndarray, picture: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """A hard cluster map `(h, w)` over a picture `(H, W, 3)` uint8: each patch in its cluster's palette colour
    (nearest upsampling), blended with the greyed picture. Returns `(H, W, 3)` uint8."""
    colors = palette[resize_nearest(hard_map, picture.shape[:2])].astype(np.float64)
    blended = HARD_MAP_OPACITY * colors + (1.0 - HARD_MAP_OPACITY) * _grey(picture)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def draw_soft_map(soft_map: np.ndarray, picture: np.ndarray) -> np.ndarray:
    """One cluster's soft assignment `(h, w)` over a picture `(H, W, 3)` uint8: bilinearly upsampled, stretched to
    its own [min, max] range and drawn on the heat scale over the darkened, greyed picture. Returns `(H, W, 3)` uint8."""
    values = _resize_bilinear(soft_map, picture.shape[:2])
    low, high = values.min(initial=np.inf), values.max(initial=-np.inf)
    values = (values - low) / (high - low) if high > low else np.zeros_like(values)
    weight = (HEATMAP_OPACITY * values)[..., None]
    blended = weight * heat_colors(values) + (1.0 - weight) * 0.6 * _grey(picture)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def load_font(size: float | None = None):
    """Pillow's default font, at `size` pixels where Pillow can scale it (10.1+, with FreeType; else its fixed
    bitmap font); `None` where Pillow has no bundled font (drawing then uses Pillow's own default)."""
    try:
        return ImageFont.load_default() if size is None else ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 takes no size
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
    font = load_font()
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


def _model_with_clusters(model):
    """`model` when it is a PaCa-ViT model, else its PaCa-ViT backbone (e.g. a `UperNetForSemanticSegmentation`
    with a PaCa-ViT backbone: its stages hold the clusters; its own head has none); `ValueError` otherwise."""
    model_type = getattr(model.config, "model_type", None)
    if model_type == "pacavit":
        return model
    backbone = getattr(model, "backbone", None)
    if backbone is not None and getattr(backbone.config, "model_type", None) == "pacavit":
        return backbone
    raise ValueError(
        f"{type(model).__name__} (model_type {model_type!r}) is neither a PaCa-ViT model nor one with a PaCa-ViT "
        f"backbone: it has no clusters to draw"
    )


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
            `PaCaViTForSemanticSegmentation`), or a model with a PaCa-ViT backbone (e.g. UperNet), whose backbone
            stages are drawn. Any other model is a `ValueError`.
        image: a PIL image, a path, or an `(H, W[, C])` array.
        stage: `None` for every stage that has clusters (plus the head of a segmentation model); an int N for
            stage N only (1-based); `"head"` for the segmentation head only.
        top_k: number of heatmap columns (>= 1; at most the largest number of clusters of a drawn row): the soft
            assignments of the `top_k` most used clusters (most patches won in the hard map, see the module
            docstring), each stretched to its own [min, max] range (so even a nearly uniform assignment shows
            where it is larger) and overlaid on the image. Rows with fewer clusters leave the remaining cells empty.
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
    if top_k < 1:
        raise ValueError(f"`top_k` must be >= 1, got {top_k}")
    model = _model_with_clusters(model)
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
    top_k = min(top_k, max((assignments[key].shape[1] for key in keys), default=top_k))
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
            title = f"stage {key[len('stage') :]}: {num_clusters} cl. {height}x{width}"
        hard_tile = draw_hard_map(hard, shown, cluster_palette(num_clusters))
        row = [(title, shown), (f"hard: {used}/{num_clusters} used", hard_tile)]
        for cluster, count in top_clusters(hard, num_clusters, top_k):
            share = 100.0 * count / hard.size
            row.append((f"{names[cluster]} {share:.0f}%", draw_soft_map(soft[cluster], shown)))
        row += [("", None)] * (2 + top_k - len(row))
        rows.append(row)
    return _compose(rows, 2 + top_k, cell)


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
    `config.architectures`. A folder without a saved processor gets the authors' evaluation transform (with a
    warning; `paca_hf.loading.load_image_processor`)."""
    from transformers import AutoConfig

    import paca_hf  # noqa: F401  (registers the PaCa-ViT Auto classes, image processor included)

    from .loading import load_image_processor

    config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    model = auto_model_class(getattr(config, "architectures", None)).from_pretrained(name_or_path, **kwargs)
    return model.eval(), load_image_processor(name_or_path, **kwargs)


__all__ = [
    "assignments_from_outputs",
    "auto_model_class",
    "cluster_palette",
    "compute_cluster_assignments",
    "draw_hard_map",
    "draw_soft_map",
    "hard_cluster_map",
    "load_model_and_processor",
    "normalize_image",
    "prepare_image",
    "render_clusters",
    "resize_nearest",
    "top_clusters",
]
