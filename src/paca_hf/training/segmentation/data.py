"""Data of the segmentation fine-tune: `image` / `annotation` datasets (Hub id, local folder or the built-in
scenes), class names, a seeded epoch sampler, the collate function and an endless stream of batches."""

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...images import is_file_source, load_label_map, open_stored_image
from ..arguments import BUILTIN_SCENES
from ..errors import TrainingError
from ..sampling import EpochSampler, batch_stream  # noqa: F401  (their home is paca_hf.training.sampling)
from .augmentation import decode_image, decode_label_map


logger = logging.getLogger(__name__)

ADE20K_NAMES = ("scene_parse_150", "ade20k", "ade_20k", "ade20k-id2label")


def collate_segmentation(examples: Sequence[dict]) -> dict:
    """Lists (images may differ in size): `images` (3, H, W) pixels and `labels` (H, W) int64 raw annotation values,
    decoded by `paca_hf.images` (EXIF orientation applied to both: a map without a tag of its own is turned as its
    image is; 8-bit images stay uint8, 16-bit ones are float32 on the 0..255 scale). Images may be files as
    `datasets` stores them undecoded (see `load_segmentation_splits`). Augmentation and label reduction happen later,
    in the training loop."""
    images, labels = [], []
    for example in examples:
        image = example["image"]
        stored = open_stored_image(image) if is_file_source(image) else image  # opened once, its EXIF tag kept
        images.append(decode_image(stored))
        labels.append(decode_label_map(example["annotation"], image=stored))
    return {"images": images, "labels": labels}


def _undecoded_images(dataset):
    """`dataset` with its `image` / `annotation` image columns left undecoded (`{"bytes", "path"}`): `datasets`
    turns a tagged image upright and drops its EXIF tag, so a label map without a tag (it annotates the stored grid)
    could no longer be turned to match; `paca_hf.images` decodes both from the files instead."""
    import datasets

    for column in ("image", "annotation"):
        feature = dataset.features[column]
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


def _rename_columns(dataset):
    column_names = dataset.column_names
    renames = {}
    if "image" not in column_names:
        for candidate in ("pixel_values", "img"):
            if candidate in column_names:
                renames[candidate] = "image"
                break
    if "annotation" not in column_names:
        for candidate in ("label", "labels", "segmentation", "seg_map", "semantic_map"):
            if candidate in column_names:
                renames[candidate] = "annotation"
                break
    if renames:
        dataset = dataset.rename_columns(renames)
    missing = {"image", "annotation"} - set(dataset.column_names)
    if missing:
        raise TrainingError(
            f"The dataset needs an `image` and an `annotation` column (the ADE20k / scene_parse_150 schema); it has "
            f"{column_names}, missing {sorted(missing)}."
        )
    return dataset


def load_segmentation_splits(
    dataset_name: str,
    dataset_config_name: str | None = None,
    train_val_split: float = 0.15,
    seed: int = 0,
    num_train_images: int | None = None,
    num_eval_images: int | None = None,
    builtin_image_size: int = 128,
    cache_dir: str | None = None,
    trust_remote_code: bool = False,
):
    """`(train, validation)` datasets with `image` and `annotation` columns.

    `dataset_name` is a Hub id (`scene_parse_150`), a local folder that `datasets.load_dataset` reads (parquet /
    image folders, e.g. from `paca_hf.data.scenes.save_scenes_to_disk`) or that `datasets.load_from_disk` reads,
    or `builtin-scenes` (generated in memory: `num_train_images` (200) and `num_eval_images` (50) disjoint scenes
    of `builtin_image_size` pixels). Without a validation split, `train_val_split` of the training set is held
    out (seeded). `None` counts mean every image (200 / 50 built-in scenes). Raises `TrainingError` when the dataset
    cannot be read or lacks the columns, or for a count below 1. Image columns of a read dataset come undecoded
    (`{"bytes", "path"}`), for `collate_segmentation` to decode image and map alike (see `_undecoded_images`)."""
    import datasets

    for flag, count in (("--num_train_images", num_train_images), ("--num_eval_images", num_eval_images)):
        if count is not None and count < 1:
            raise TrainingError(f"{flag} must be >= 1 (leave it out to use every image), got {count}.")
    if dataset_name == BUILTIN_SCENES:
        from ...data.scenes import make_scene_splits

        splits = make_scene_splits(
            num_train=200 if num_train_images is None else num_train_images,
            num_validation=50 if num_eval_images is None else num_eval_images,
            image_size=(builtin_image_size, builtin_image_size),
            seed=0,
        )
        return splits["train"], splits["validation"]

    path = Path(dataset_name)
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            dataset = datasets.load_from_disk(str(path))
        else:
            kwargs = {"cache_dir": cache_dir}
            if trust_remote_code:
                kwargs["trust_remote_code"] = True
            dataset = datasets.load_dataset(dataset_name, dataset_config_name, **kwargs)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        hint = " (HF_HUB_OFFLINE is set: Hub datasets cannot be downloaded)" if offline else ""
        raise TrainingError(
            f"Could not load the dataset {dataset_name!r}{hint}: {type(error).__name__}: {error}. Pass a local "
            f"folder with `image` and `annotation` columns, or `--dataset_name {BUILTIN_SCENES}`."
        ) from error

    if isinstance(dataset, datasets.Dataset):
        dataset = datasets.DatasetDict({"train": dataset})
    if "train" not in dataset:
        raise TrainingError(f"The dataset {dataset_name!r} has no `train` split (splits: {list(dataset)}).")
    train = _undecoded_images(_rename_columns(dataset["train"]))
    validation = None
    for name in ("validation", "val", "test"):
        if name in dataset:
            validation = _undecoded_images(_rename_columns(dataset[name]))
            break
    if validation is None:
        if not 0.0 < train_val_split < 1.0:
            raise TrainingError(
                f"The dataset {dataset_name!r} has no validation split; pass --train_val_split between 0 and 1."
            )
        parts = train.train_test_split(test_size=train_val_split, seed=seed)
        train, validation = parts["train"], parts["test"]
    if num_train_images is not None:
        train = train.select(range(min(num_train_images, len(train))))
    if num_eval_images is not None:
        validation = validation.select(range(min(num_eval_images, len(validation))))
    return train, validation


def _sorted_id2label(names: dict) -> dict[int, str]:
    return {int(k): str(v) for k, v in sorted(names.items(), key=lambda kv: int(kv[0]))}


def resolve_id2label(
    dataset_name: str,
    reduce_labels: bool,
    train_dataset=None,
    id2label_file: str | None = None,
    ignore_index: int = 255,
    max_scan: int = 2000,
) -> dict[int, str]:
    """Class names of the dataset, indexed by the labels the model is trained on (after label reduction):

    `--id2label_file`; else the built-in scenes' names; else `id2label.json` in a local dataset folder; else
    ADE20k's 150 names for `scene_parse_150` / ADE20k; else `LABEL_i` up to the largest annotation value found
    in (up to `max_scan` images of) the training set."""
    from ...configuration_pacavit import load_id2label

    def finish(names: dict[int, str], includes_background: bool) -> dict[int, str]:
        names = {int(k): str(v) for k, v in names.items()}
        if reduce_labels and includes_background:
            names = {k - 1: v for k, v in names.items() if k > 0}
        elif not reduce_labels and not includes_background:
            names = {0: "other", **{k + 1: v for k, v in names.items()}}
        return dict(sorted(names.items()))

    if id2label_file is not None:
        # A file is taken to be indexed like the model's labels (after reduction).
        return _sorted_id2label(json.loads(Path(id2label_file).read_text()))
    if dataset_name == BUILTIN_SCENES:
        from ...data.scenes import id2label

        return finish(id2label(include_background=True), includes_background=True)
    local = Path(dataset_name) / "id2label.json"
    if local.is_file():
        return _sorted_id2label(json.loads(local.read_text()))
    lowered = dataset_name.lower()
    if any(name in lowered for name in ADE20K_NAMES):
        return finish(load_id2label("ade20k"), includes_background=False)
    if train_dataset is None:
        raise TrainingError(f"Cannot tell the classes of {dataset_name!r}: pass --id2label_file.")
    largest = 0
    for index in range(min(len(train_dataset), max_scan)):
        values = np.unique(load_label_map(train_dataset[index]["annotation"]))
        values = values[values != ignore_index]
        if values.size:
            largest = max(largest, int(values.max()))
    num_labels = largest if reduce_labels else largest + 1
    if num_labels < 2:
        raise TrainingError(f"Found fewer than 2 classes in {dataset_name!r}; pass --id2label_file.")
    logger.warning(
        f"No class names for {dataset_name!r} (no id2label.json): using LABEL_0..LABEL_{num_labels - 1} from the "
        f"largest annotation value {largest} (reduce_labels={reduce_labels})."
    )
    return {index: f"LABEL_{index}" for index in range(num_labels)}
