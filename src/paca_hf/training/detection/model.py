"""The model of the COCO fine-tune: `PaCaViTMaskRCNNForInstanceSegmentation` from a converted detector, from a
converted PaCa-ViT classifier (its backbone; FPN, RPN and RoI heads new) or from a config, with a report of what was
loaded (`InitReport`), and the image processor saved with it."""

import logging
from collections.abc import Mapping
from pathlib import Path

from ..errors import TrainingError
from ..init_report import InitReport


logger = logging.getLogger(__name__)


def _labels(id2label: Mapping[int, str]) -> dict:
    return {
        "num_labels": len(id2label),
        "id2label": dict(id2label),
        "label2id": {name: label for label, name in id2label.items()},
    }


def _quietly(function, *args, **kwargs):
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # our own, shorter report follows
    try:
        return function(*args, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)


def source_id2label(model_name_or_path: str | None, cache_dir: str | None = None) -> dict | None:
    """The `id2label` of a detector folder (None for a classifier, a config or nothing), to keep its label order
    when it names the training categories."""
    from ...configuration_pacavit_mask_rcnn import PaCaViTMaskRCNNConfig

    if model_name_or_path is None:
        return None
    config_dict, _ = PaCaViTMaskRCNNConfig.get_config_dict(model_name_or_path, cache_dir=cache_dir)
    if config_dict.get("model_type") != PaCaViTMaskRCNNConfig.model_type:
        return None
    return {int(label): name for label, name in (config_dict.get("id2label") or {}).items()}


def build_detector(
    id2label: Mapping[int, str],
    model_name_or_path: str | None = None,
    config_name: str | None = None,
    drop_path_rate: float | None = None,
    cache_dir: str | None = None,
):
    """`(model, report)`: a `PaCaViTMaskRCNNForInstanceSegmentation` for the classes `id2label`.

    * `model_name_or_path` a detector (model_type `pacavit_mask_rcnn`): every tensor whose name and shape match
      loads; the class-dependent layers (classifier, box deltas, mask predictor) are re-initialised when the number
      of classes differs;
    * `model_name_or_path` a PaCa-ViT checkpoint (model_type `pacavit`, e.g. an ImageNet classifier): its backbone
      tensors load into the detector's backbone, the FPN, RPN and RoI heads get mmdetection's initialisation;
    * `config_name`: an official PaCa-ViT name (the backbone; mmdetection's Mask R-CNN heads), a PaCa-ViT
      config.json (the same) or a detector's config.json: from scratch.

    Raises:
        `TrainingError`: a source of another architecture, a classifier none of whose tensors is a backbone tensor,
            a `config_name` that is neither a name nor a file.
    """
    from ...configuration_pacavit import OFFICIAL_NAMES, PaCaViTConfig
    from ...configuration_pacavit_mask_rcnn import PaCaViTMaskRCNNConfig
    from ...modeling_pacavit import PaCaViTBackbone
    from ...modeling_pacavit_mask_rcnn import PaCaViTMaskRCNNForInstanceSegmentation

    labels = _labels(id2label)
    backbone_overrides = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
    if model_name_or_path is not None:
        config_dict, _ = PaCaViTConfig.get_config_dict(model_name_or_path, cache_dir=cache_dir)
        model_type = config_dict.get("model_type")
        report = InitReport(source=str(model_name_or_path))
        if model_type == PaCaViTMaskRCNNConfig.model_type:
            config = PaCaViTMaskRCNNConfig.from_pretrained(model_name_or_path, cache_dir=cache_dir, **labels)
            config.backbone_config.update(backbone_overrides)
            model, info = _quietly(
                PaCaViTMaskRCNNForInstanceSegmentation.from_pretrained,
                model_name_or_path,
                config=config,
                ignore_mismatched_sizes=True,
                output_loading_info=True,
                cache_dir=cache_dir,
            )
            mismatched = {entry[0]: entry for entry in info.get("mismatched_keys", [])}
            missing = set(info.get("missing_keys", []))
            report.reinitialized = [(name, list(old), list(new)) for name, old, new in mismatched.values()]
            report.newly_initialized = sorted(missing - set(mismatched))
            report.unused = sorted(set(info.get("unexpected_keys", [])))
            report.loaded = sorted(set(model.state_dict()) - missing - set(mismatched))
            return model, report
        if model_type != PaCaViTConfig.model_type:
            raise TrainingError(
                f"--model_name_or_path {model_name_or_path} holds a model_type {model_type!r} model, neither a "
                f"PaCa-ViT detector ({PaCaViTMaskRCNNConfig.model_type!r}) nor a PaCa-ViT checkpoint "
                f"({PaCaViTConfig.model_type!r}, e.g. a converted ImageNet classifier) whose backbone this recipe "
                f"starts from; pass one of those, or --config_name to train from scratch."
            )
        backbone_config = PaCaViTConfig.from_pretrained(model_name_or_path, cache_dir=cache_dir, **backbone_overrides)
        model = PaCaViTMaskRCNNForInstanceSegmentation(
            PaCaViTMaskRCNNConfig(backbone_config=backbone_config, **labels)
        )
        backbone, info = _quietly(
            PaCaViTBackbone.from_pretrained,
            model_name_or_path,
            config=model.config.backbone_config,
            output_loading_info=True,
            cache_dir=cache_dir,
        )
        missing = set(info.get("missing_keys", []))
        loaded = sorted(set(backbone.state_dict()) - missing)
        if not loaded:
            raise TrainingError(
                f"--model_name_or_path {model_name_or_path}: none of its tensors is a PaCa-ViT backbone tensor (0 "
                f"loaded), so the fine-tune would start from random weights. Pass a converted PaCa-ViT checkpoint, "
                f"or --config_name to train from scratch on purpose."
            )
        model.backbone.load_state_dict(backbone.state_dict())
        report.loaded = [f"backbone.{name}" for name in loaded]
        report.newly_initialized = sorted(set(model.state_dict()) - set(report.loaded))
        report.unused = sorted(set(info.get("unexpected_keys", [])))
        return model, report

    if config_name is None:
        raise TrainingError("Pass --model_name_or_path (a converted checkpoint) or --config_name (from scratch).")
    if config_name in OFFICIAL_NAMES:
        config = PaCaViTMaskRCNNConfig(
            backbone_config=PaCaViTConfig.from_official_name(config_name, **backbone_overrides), **labels
        )
    elif Path(config_name).exists():
        config_dict, _ = PaCaViTConfig.get_config_dict(config_name)
        if config_dict.get("model_type") == PaCaViTMaskRCNNConfig.model_type:
            config = PaCaViTMaskRCNNConfig.from_pretrained(config_name, **labels)
            config.backbone_config.update(backbone_overrides)
        else:
            config = PaCaViTMaskRCNNConfig(
                backbone_config=PaCaViTConfig.from_pretrained(config_name, **backbone_overrides), **labels
            )
    else:
        raise TrainingError(
            f"--config_name {config_name!r} is neither an official name ({', '.join(OFFICIAL_NAMES)}) nor a "
            f"config.json / folder."
        )
    model = PaCaViTMaskRCNNForInstanceSegmentation(config)
    report = InitReport(source=f"config {config_name} (from scratch)")
    report.newly_initialized = sorted(model.state_dict())
    return model, report


def recipe_image_processor(resize_scale: tuple[int, int]):
    """The image processor saved with the model and evaluated with: mmdetection's test transform at
    `resize_scale` = (LONG, SHORT) (keep-ratio resize to fit both, the authors' mean / std, padding to 32)."""
    from ...image_processing_pacavit_mask_rcnn import PaCaViTMaskRCNNImageProcessor

    longest, shortest = (int(side) for side in resize_scale)
    return PaCaViTMaskRCNNImageProcessor(
        size={"shortest_edge": min(longest, shortest), "longest_edge": max(longest, shortest)}
    )
