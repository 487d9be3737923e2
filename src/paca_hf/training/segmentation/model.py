"""The model of the segmentation fine-tune: `PaCaViTForSemanticSegmentation` from a converted checkpoint (tensors
whose shape changes re-initialised, and reported) or from a config, and the image processor saved with it."""

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import TrainingError
from ..init_report import InitReport


logger = logging.getLogger(__name__)


def parse_num_clusters(value: str | None, base: Sequence[int]) -> list[int]:
    """`--num_clusters`: "keep" (None) keeps `base`; one number replaces every non-zero stage count (stages without
    clusters keep 0, as the authors' 200/200/200/0); a comma list gives every stage."""
    if value is None or str(value).lower() == "keep":
        return list(base)
    try:
        parts = [int(part) for part in str(value).replace(" ", "").split(",") if part != ""]
    except ValueError:
        parts = []
    if not parts or min(parts) < 0:
        raise TrainingError(
            f"--num_clusters {value!r}: expected one number, a comma list of numbers >= 0 (one per stage) or 'keep'."
        )
    if len(parts) == 1:
        return [parts[0] if count > 0 else 0 for count in base]
    if len(parts) != len(base):
        raise TrainingError(f"--num_clusters {value!r} has {len(parts)} entries but the model has {len(base)} stages.")
    return parts


def _label_kwargs(id2label: dict[int, str]) -> dict:
    return {
        "num_labels": len(id2label),
        "id2label": dict(id2label),
        "label2id": {name: index for index, name in id2label.items()},
    }


def build_model(
    id2label: dict[int, str],
    model_name_or_path: str | None = None,
    config_name: str | None = None,
    num_clusters: str | None = "200",
    config_overrides: dict | None = None,
    cache_dir: str | None = None,
):
    """`(model, report)`: a `PaCaViTForSemanticSegmentation` for the classes `id2label`.

    From `model_name_or_path` (a converted checkpoint folder or Hub id, e.g. an ImageNet classifier): every tensor
    of the checkpoint whose name and shape match is loaded; tensors whose shape changes (the clustering output
    layers when `num_clusters` changes, e.g. 100 -> 200, the head's classifier for other classes) are
    re-initialised; the decode head is new. From `config_name` (an official name or a config.json): trained from
    scratch. `report` (an `InitReport`) names every tensor in each case. A new decode head's output layers get
    mmseg's init from the model's own `_init_weights`. Raises `TrainingError` for a `config_name` that is neither,
    for a `model_name_or_path` of another architecture (e.g. model_type 'upernet'), or one from which no backbone
    tensor loads."""
    from transformers.utils import logging as hf_logging

    from ...configuration_pacavit import OFFICIAL_NAMES, PaCaViTConfig
    from ...modeling_pacavit import PaCaViTForSemanticSegmentation

    overrides = dict(config_overrides or {})
    labels = _label_kwargs(id2label)
    if model_name_or_path is not None:
        config_dict, _ = PaCaViTConfig.get_config_dict(model_name_or_path, cache_dir=cache_dir)
        model_type = config_dict.get("model_type")
        if model_type != PaCaViTConfig.model_type:
            architectures = ", ".join(config_dict.get("architectures") or []) or "no architectures listed"
            raise TrainingError(
                f"--model_name_or_path {model_name_or_path} holds a model_type {model_type!r} model ({architectures}), "
                f"not a PaCa-ViT one ({PaCaViTConfig.model_type!r}). This recipe trains "
                f"PaCaViTForSemanticSegmentation (PaCa-ViT with the PaCa head) and starts from a PaCa-ViT checkpoint: "
                f"pass a converted PaCa-ViT folder or Hub id (e.g. an ImageNet classifier, model_type "
                f"{PaCaViTConfig.model_type!r}) as --model_name_or_path, or --config_name to train from scratch."
            )
        base = PaCaViTConfig.from_pretrained(model_name_or_path, cache_dir=cache_dir)
        clusters = parse_num_clusters(num_clusters, base.num_clusters)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # our own, shorter report follows
        try:
            model, info = PaCaViTForSemanticSegmentation.from_pretrained(
                model_name_or_path,
                num_clusters=clusters,
                ignore_mismatched_sizes=True,
                output_loading_info=True,
                cache_dir=cache_dir,
                **labels,
                **overrides,
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        report = InitReport(source=str(model_name_or_path))
        mismatched = {entry[0]: entry for entry in info.get("mismatched_keys", [])}
        missing = set(info.get("missing_keys", []))
        report.reinitialized = [(name, list(old), list(new)) for name, old, new in mismatched.values()]
        report.newly_initialized = sorted(missing - set(mismatched))
        report.unused = sorted(set(info.get("unexpected_keys", [])))
        report.loaded = sorted(set(model.state_dict()) - missing - set(mismatched))
        prefix = model.base_model_prefix + "."
        if not any(name.startswith(prefix) for name in report.loaded):
            example = next(name for name in sorted(model.state_dict()) if name.startswith(prefix))
            raise TrainingError(
                f"--model_name_or_path {model_name_or_path}: none of its tensors is a backbone tensor of "
                f"PaCaViTForSemanticSegmentation (0 loaded; names expected under {prefix!r}, e.g. {example!r}; the "
                f"checkpoint has {len(report.unused)} other tensors), so the fine-tune would start from random weights. Pass a converted PaCa-ViT checkpoint, or --config_name "
                f"to train from scratch on purpose."
            )
        return model, report

    if config_name is None:
        raise TrainingError("Pass --model_name_or_path (a converted checkpoint) or --config_name (from scratch).")
    if config_name in OFFICIAL_NAMES:
        config = PaCaViTConfig.from_official_name(config_name, **labels)
    elif Path(config_name).exists():
        config = PaCaViTConfig.from_pretrained(config_name)
    else:
        raise TrainingError(
            f"--config_name {config_name!r} is neither an official name ({', '.join(OFFICIAL_NAMES)}) nor a "
            f"config.json / folder."
        )
    config_dict = config.to_dict()
    for key in (
        "id2label",
        "label2id",
        "num_labels",
        "_name_or_path",
        "transformers_version",
        "model_type",
        "architectures",
    ):
        config_dict.pop(key, None)
    config_dict.update(labels)
    config_dict["num_clusters"] = parse_num_clusters(num_clusters, config.num_clusters)
    config_dict.update(overrides)
    config = PaCaViTConfig(**config_dict)
    model = PaCaViTForSemanticSegmentation(config)
    report = InitReport(source=f"config {config_name} (from scratch)")
    report.newly_initialized = sorted(model.state_dict())
    return model, report


def recipe_image_processor(resize_scale: tuple[int, int], reduce_labels: bool):
    """The image processor saved with the model, which is also the one the fine-tune evaluates with: mmseg's
    whole-image evaluation resize (`Resize(scale=resize_scale, keep_ratio=True)`: shorter side to `resize_scale[1]`,
    longer side capped at `resize_scale[0]`, bilinear without antialiasing, no crop), ImageNet normalisation;
    `do_reduce_labels` as in training."""
    from ...loading import default_image_processor

    longest, shortest = (int(side) for side in resize_scale)
    processor = default_image_processor("semantic-segmentation")
    # transformers' resize caps the long side only above the short one; a square scale keeps the short-side rule.
    processor.size = {"shortest_edge": shortest, **({"longest_edge": longest} if longest > shortest else {})}
    processor.do_reduce_labels = bool(reduce_labels)
    return processor


def segmentation_loss(
    model, pixel_values: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255, avg_non_ignore: bool = True
):
    """The training loss of `model` (a `PaCaViTForSemanticSegmentation`, possibly wrapped by DDP / FSDP) on a
    batch, normalised as mmseg's `CrossEntropyLoss(avg_non_ignore=...)`. Returns `(loss, outputs)`.

    Args:
        pixel_values: `(batch, 3, height, width)` float images.
        labels: `(batch, height, width)` class indices, `ignore_index` where ignored (the model's
            `config.semantic_loss_ignore_index`, 255).
        avg_non_ignore: `True` (the model's own loss, and the authors' PaCa-head setting, `avg_non_ignore=True` in
            PaCaViT `segmentation/configs/_base_/models/paca_head.py`): each cross-entropy term (decode head, and
            `config.cluster_loss_weight` x the clustering term) is the sum over the non-ignored pixels divided by
            their number. `False` (mmseg's default, which the authors' UperNet configs keep): the same sum divided
            by the number of *all* pixels, ignored ones included, i.e. the first times the non-ignored fraction of
            the batch. Both terms are computed at the labels' resolution, so one factor serves both.
    """
    outputs = model(pixel_values=pixel_values, labels=labels)
    loss = outputs.loss
    if not avg_non_ignore:
        scored = (labels != ignore_index).sum()
        loss = loss * (scored.to(loss.dtype) / labels.numel())
    return loss, outputs
