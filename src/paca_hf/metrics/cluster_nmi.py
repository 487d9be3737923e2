"""Do a PaCa-ViT model's clusters follow the objects? The normalised mutual information (NMI) between hard cluster
maps and label maps, per stage and for the segmentation head, pooled over a segmentation dataset.

* [`cluster_label_nmi`] / [`nmi_from_contingency`]: the NMI of one pair of maps / of a contingency table;
* [`stage_cluster_nmi`]: per stage (and head), pooled over a dataset (ADE20k schema or ready batches);
* [`cluster_nmi_report`]: what scripts/cluster_nmi.py computes and writes, optionally against the same
  architecture at random initialisation.

Hard cluster maps and soft assignments follow `paca_hf.visualization`'s conventions (its module docstring).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch

from ..images import load_label_map, reduce_labels, same_size_groups
from ..visualization import compute_cluster_assignments, hard_cluster_map, normalize_image, resize_nearest


def contingency_table(cluster_map, label_map, ignore_index: int | None = 255) -> np.ndarray:
    """Counts `(clusters, labels)` of pixel pairs, over the pixels whose label is not `ignore_index`; rows and
    columns are the distinct cluster ids / labels present, in increasing order."""
    clusters = np.asarray(cluster_map)
    labels = np.asarray(label_map)
    if clusters.shape != labels.shape:
        raise ValueError(
            f"cluster map and label map must have the same shape, got {clusters.shape} and {labels.shape}"
        )
    clusters, labels = clusters.reshape(-1), labels.reshape(-1)
    if ignore_index is not None:
        keep = labels != ignore_index
        clusters, labels = clusters[keep], labels[keep]
    cluster_ids, cluster_index = np.unique(clusters, return_inverse=True)
    label_ids, label_index = np.unique(labels, return_inverse=True)
    counts = np.bincount(
        cluster_index.reshape(-1) * len(label_ids) + label_index.reshape(-1),
        minlength=len(cluster_ids) * len(label_ids),
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
    mutual_information = float(
        np.sum(joint / total * np.log(joint * total / (rows[nonzero[0]] * columns[nonzero[1]])))
    )
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
        return resize_nearest(labels, (out_height, out_width))
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
        images = [example["image"] for example in pending]
        annotations = [load_label_map(example["annotation"]) for example in pending]
        pending.clear()
        if image_processor is None:
            for image, annotation in zip(images, annotations):
                labels = reduce_labels(annotation, ignore_index) if reduce else annotation
                yield normalize_image(image), torch.from_numpy(labels)[None]
            return
        # Images of different sizes (a processor without a crop keeps them) run as batches of one size each.
        encoded = image_processor(images, segmentation_maps=annotations, do_reduce_labels=reduce)
        pixel_values = [torch.as_tensor(pixels) for pixels in encoded["pixel_values"]]
        labels = [torch.as_tensor(label) for label in encoded["labels"]]
        for indices in same_size_groups(pixel_values):
            yield torch.stack([pixel_values[i] for i in indices]), torch.stack([labels[i] for i in indices])

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
            argument); without one each image is fed at its own size (ImageNet normalisation). Examples are taken
            `batch_size` at a time and the model runs on those of one prepared size together, so images of any
            sizes can be mixed (e.g. with a segmentation processor, which keeps the aspect ratio and does not crop).
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
    for pixel_values, labels in _batches(
        data, image_processor, batch_size, do_reduce_labels, ignore_index, num_images
    ):
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
# the report of scripts/cluster_nmi.py


# The built-in scenes' splits for scoring: the stream the fine-tune's `builtin-scenes` (and the demo) train on, and
# another stream, disjoint from it whatever number of training scenes a run used.
BUILTIN_SCENE_STREAMS = {"train": 0, "validation": 1}


def load_examples(
    dataset: str = "builtin",
    split: str | None = None,
    num_images: int = 16,
    image_size: int = 128,
    return_split: bool = False,
):
    """At most `num_images` examples in the ADE20k schema (`image`, `annotation` with 0 = other); with
    `return_split`, `(examples, name of the split they come from)`. `"builtin"` gives the package's synthetic scenes
    (`paca_hf.data.scenes`, `image_size` square): split `validation` (the default) is held out, a stream of scenes
    no training run on the built-in scenes sees; `train` is the scenes the fine-tune's `builtin-scenes` trains on.
    A folder is read with `datasets.load_from_disk` or `datasets.load_dataset` (split `split`, default
    validation, else the first). Raises `ValueError` naming the problem (no such folder, unknown split, missing
    columns)."""
    import os

    if dataset == "builtin":
        from ..data.scenes import make_scenes

        split = split or "validation"
        if split not in BUILTIN_SCENE_STREAMS:
            raise ValueError(f"--split {split}: the built-in scenes have {sorted(BUILTIN_SCENE_STREAMS)}")
        scenes = make_scenes(num_images, image_size=(image_size, image_size), seed=BUILTIN_SCENE_STREAMS[split])
        return (scenes, split) if return_split else scenes
    if not os.path.exists(dataset):
        raise ValueError(f"--dataset {dataset}: no such folder (use 'builtin' or a dataset folder)")
    import datasets

    try:
        data = datasets.load_from_disk(dataset)
    except (FileNotFoundError, ValueError):
        data = datasets.load_dataset(dataset)
    if isinstance(data, datasets.DatasetDict):
        split = split or ("validation" if "validation" in data else next(iter(data)))
        if split not in data:
            raise ValueError(f"--split {split}: the dataset has {sorted(data)}")
        data = data[split]
    else:
        split = split or "(a single split)"
    missing = {"image", "annotation"} - set(data.column_names)
    if missing:
        raise ValueError(f"--dataset {dataset}: columns {sorted(missing)} missing (ADE20k schema: image, annotation)")
    examples = data.select(range(min(num_images, len(data))))
    return (examples, split) if return_split else examples


def cluster_nmi_report(
    model,
    image_processor,
    examples,
    num_images: int,
    batch_size: int = 4,
    compare_random: bool = False,
    seed: int = 0,
) -> dict:
    """`{"num_images", "num_clusters": {key: clusters}, "nmi": {key: NMI}}` of [`stage_cluster_nmi`] on `examples`,
    plus `"nmi_random_init"` and `"random_init_seed"` with `compare_random`: the same architecture built with
    `from_config` after `torch.manual_seed(seed)` (a baseline). Raises `ValueError` when nothing can be scored."""
    from ..visualization import auto_model_class

    def score(scored_model):
        return stage_cluster_nmi(
            scored_model, examples, image_processor, num_images=num_images, batch_size=batch_size, return_tables=True
        )

    scores, tables = score(model)
    result = {
        "num_images": min(num_images, len(examples)),
        "num_clusters": {key: int(table.shape[0]) for key, table in tables.items()},
        "nmi": scores,
    }
    if compare_random:
        torch.manual_seed(seed)
        random_model = auto_model_class(model.config.architectures).from_config(model.config)
        device = next(model.parameters()).device
        result["nmi_random_init"], _ = score(random_model.to(device).eval())
        result["random_init_seed"] = seed
    return result


def format_table(scores: dict, random_scores: dict | None = None, cluster_counts: dict | None = None) -> str:
    """A plain-text table: stage | clusters | NMI (trained) [| NMI (random init)]."""
    header = ["stage", "clusters", "NMI (trained)"] + (["NMI (random init)"] if random_scores is not None else [])
    lines = [header]
    for key, value in scores.items():
        line = [key, str((cluster_counts or {}).get(key, "")), f"{value:.4f}"]
        if random_scores is not None:
            line.append(f"{random_scores[key]:.4f}" if key in random_scores else "-")
        lines.append(line)
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


__all__ = [
    "cluster_label_nmi",
    "cluster_nmi_report",
    "contingency_table",
    "downsample_labels",
    "format_table",
    "load_examples",
    "nmi_from_contingency",
    "stage_cluster_nmi",
]
