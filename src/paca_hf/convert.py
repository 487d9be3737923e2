"""The authors' PaCa-ViT state dicts -> ours, strictly: timm classifiers, mmseg PaCa-head and UperNet segmentors,
and mmdet's Mask R-CNN detectors (their backbone alone, or whole with `convert_detector_state_dict`).

Pure: nothing here writes files. Saving a converted model as a complete repo (weights, processor, remote code,
model card), checking and uploading it is `paca_hf.hub`'s job.
"""

import math
import os
import re
from collections import Counter, defaultdict
from pathlib import Path

import torch
from transformers.utils import logging

from .checkpoint_reader import CheckpointError, load_state_dict_and_meta, load_state_dict_file
from .configuration_pacavit import OFFICIAL_NAMES, PaCaViTConfig
from .releases import BACKBONE, DETECTOR, FORM_TASKS, RELEASES, SIZES, UPERNET


logger = logging.get_logger(__name__)

TASKS = ("image-classification", "semantic-segmentation", "instance-segmentation", "backbone")
INSTANCE_SEGMENTATION = FORM_TASKS[DETECTOR]


class ConversionError(CheckpointError):
    """A checkpoint that cannot be converted exactly (unreadable, untrusted, or not matching the model)."""


# Authors' key -> our key, tried in order; the first pattern that matches the whole key wins. A replacement of None
# marks a tensor that carries no weights of its own and is checked instead (see `_check_constant`).
_BACKBONE_RULES = [
    (r"patch_embed\.proj\.([01])\.(weight|bias)", lambda m: f"embeddings.conv{int(m[1]) + 1}.{m[2]}"),
    (r"patch_embed\.norm\.(weight|bias)", r"embeddings.layer_norm.\1"),
    (r"transition(\d+)\.proj\.(weight|bias)", lambda m: f"stages.{m[1]}.downsample.projection.{m[2]}"),
    (r"transition(\d+)\.norm\.(weight|bias)", lambda m: f"stages.{m[1]}.downsample.layer_norm.{m[2]}"),
    (r"norm(\d+)\.(weight|bias)", lambda m: f"stages.{int(m[1]) - 1}.layer_norm.{m[2]}"),
    (r"stage(\d+)\.(\d+)\.(.+)", lambda m: f"stages.{int(m[1]) - 1}.layers.{m[2]}.{_block_key(m[3])}"),
    (r"paca_teacher\.block(\d+)\.(\d+)\.(.+)", lambda m: f"{_teacher_stage(m[1])}.{m[2]}.{_mixer_key(m[3])}"),
    (r"paca_teacher\.transition(\d+)\.0\.blur_filter", None),
    (
        r"paca_teacher\.transition(\d+)\.0\.conv\.(.+)",
        lambda m: f"{_teacher('downsamples', m[1])}.projection.conv.{m[2]}",
    ),
    (r"paca_teacher\.transition(\d+)\.2\.(.+)", lambda m: f"{_teacher('downsamples', m[1])}.projection.norm.{m[2]}"),
    (r"paca_teacher\.lateral(\d+)\.0\.(.+)", lambda m: f"{_teacher('laterals', m[1])}.conv.{m[2]}"),
    (r"paca_teacher\.lateral(\d+)\.2\.(.+)", lambda m: f"{_teacher('laterals', m[1])}.norm.{m[2]}"),
    (r"paca_teacher\.fpn(\d+)\.(.+)", lambda m: f"{_teacher('fusions', m[1])}.{_mixer_key(m[2])}"),
    (r"paca_teacher\.to_clusters(\d+)\.(weight|bias)", lambda m: f"{_teacher('to_clusters', m[1])}.{m[2]}"),
]

_BLOCK_RENAMES = [
    ("norm1_before.", "layernorm_before."),
    ("norm2_before.", "layernorm_after."),
    ("attn.q.", "attention.q_proj."),
    ("attn.k.", "attention.k_proj."),
    ("attn.v.", "attention.v_proj."),
    ("attn.proj.", "attention.o_proj."),
    ("attn.cluster_norm.", "attention.cluster_norm."),
    ("mlp.fc1.", "mlp.fc1."),
    ("mlp.fc2.", "mlp.fc2."),
    ("mlp.dwconv.dwconv.", "mlp.dwconv."),
]

# Positions inside the authors' clustering `nn.Sequential` for each clustering type.
_CLUSTERING_LAYERS = {
    "conv": {"0": "depthwise", "2": "pointwise", "4": "to_clusters"},
    "mlp": {"0": "dense", "2": "to_clusters"},
    "linear": {"0": "to_clusters"},
}

# The decode head of the mmseg PaCa segmentor (`decode_head.*`).
_HEAD_RULES = [
    (r"convs\.(\d+)\.conv\.weight", r"stage_projections.\1.conv.weight"),
    (r"convs\.(\d+)\.bn\.(.+)", r"stage_projections.\1.norm.\2"),
    (r"q\.0\.conv\.weight", "query_projection.conv.weight"),
    (r"q\.0\.bn\.(.+)", r"query_projection.norm.\1"),
    (r"clustering\.0\.conv\.weight", "clustering.conv.weight"),
    (r"clustering\.0\.bn\.(.+)", r"clustering.norm.\1"),
    (r"proj\.conv\.weight", "output_projection.conv.weight"),
    (r"proj\.bn\.(.+)", r"output_projection.norm.\1"),
    (r"clustering\.1\.(weight|bias)", r"to_clusters.\1"),
    (r"(k|v)\.0\.(weight|bias)", lambda m: f"{_head_kv(m[1])}.dense.{m[2]}"),
    (r"(k|v)\.2\.(.+)", lambda m: f"{_head_kv(m[1])}.norm.{m[2]}"),
    (r"conv_seg\.(weight|bias)", r"classifier.\1"),
]


# mmseg's `UPerHead` (`decode_head.*`) and `FCNHead` (`auxiliary_head.*`) -> transformers' UperNet: the same module
# names, with mmseg's `ConvModule.bn` called `batch_norm` and `conv_seg` called `classifier`.
# `auxiliary_head.conv_cat` is `FCNHead(concat_input=True)`'s conv over the input concatenated with the convs' output.
_UPERNET_HEAD_RULES = [
    (
        r"(decode_head\.(?:psp_modules\.\d+\.1|bottleneck|lateral_convs\.\d+|fpn_convs\.\d+|fpn_bottleneck)"
        r"|auxiliary_head\.(?:convs\.\d+|conv_cat))\.conv\.weight",
        r"\1.conv.weight",
    ),
    (
        r"(decode_head\.(?:psp_modules\.\d+\.1|bottleneck|lateral_convs\.\d+|fpn_convs\.\d+|fpn_bottleneck)"
        r"|auxiliary_head\.(?:convs\.\d+|conv_cat))\.bn\.(.+)",
        r"\1.batch_norm.\2",
    ),
    (r"(decode_head|auxiliary_head)\.conv_seg\.(weight|bias)", r"\1.classifier.\2"),
]
# Top-level parts of an mmdet detector other than its backbone: reported, never converted.
DETECTOR_PREFIXES = ("neck.", "rpn_head.", "roi_head.", "bbox_head.", "mask_head.")


def _head_kv(name: str) -> str:
    return {"k": "key_projection", "v": "value_projection"}[name]


def _teacher(part: str, stage: str) -> str:
    return f"clustering_teacher.{part}.{int(stage) - 1}"


def _teacher_stage(stage: str) -> str:
    return f"clustering_teacher.stages.{int(stage) - 1}"


_MIXER_RENAMES = [
    ("0.fn.0.", "depthwise.conv."),
    ("0.fn.2.", "depthwise.norm."),
    ("1.", "pointwise.conv."),
    ("3.", "pointwise.norm."),
]


def _mixer_key(key: str) -> str:
    """Inside a ConvMixer block: `0.fn.0` depthwise conv, `0.fn.2` its BN, `1` pointwise conv, `3` its BN."""
    for old, new in _MIXER_RENAMES:
        if key.startswith(old):
            return new + key[len(old) :]
    raise KeyError(key)


def _block_key(key: str) -> str:
    match = re.fullmatch(r"attn\.clustering\.clustering\.(\d)\.(weight|bias)", key)
    if match:
        return f"attention.clustering.{{clustering}}{match[1]}.{match[2]}"
    for old, new in _BLOCK_RENAMES:
        if key.startswith(old):
            return new + key[len(old) :]
    raise KeyError(key)


def _apply_rules(key: str, rules) -> str | None:
    for pattern, replacement in rules:
        match = re.fullmatch(pattern, key)
        if match is None:
            continue
        if replacement is None:
            return None
        return replacement(match) if callable(replacement) else match.expand(replacement)
    raise KeyError(key)


def _blur_filter(channels: int) -> torch.Tensor:
    taps = torch.tensor([1.0, 2.0, 1.0])
    return (taps[:, None] * taps[None, :] / 16).expand(channels, 1, 3, 3)


def rename_key(key: str, clustering_type: str, upernet: bool = False) -> str | None:
    """Our name for one of the authors' keys (`backbone.` / `decode_head.` prefixes of mmseg included); None for
    the teacher's fixed blur filters. With `upernet`, the name in transformers' `UperNetForSemanticSegmentation`
    (backbone under `backbone.`). Raises KeyError for keys that belong to no part of the model."""
    if upernet:
        if key.startswith("backbone."):
            renamed = rename_key(key[len("backbone.") :], clustering_type)
            return None if renamed is None else "backbone." + renamed
        return _apply_rules(key, _UPERNET_HEAD_RULES)
    if key.startswith("decode_head."):
        return "decode_head." + _apply_rules(key[len("decode_head.") :], _HEAD_RULES)
    key = key.removeprefix("backbone.")
    if key.startswith("head."):
        return "classifier." + key[len("head.") :]
    renamed = _apply_rules(key, _BACKBONE_RULES)
    if renamed is not None and "{clustering}" in renamed:
        position = re.search(r"\{clustering\}(\d)", renamed)[1]
        layer = _CLUSTERING_LAYERS[clustering_type].get(position)
        if layer is None:
            raise KeyError(key)
        renamed = renamed.replace("{clustering}" + position, layer)
    return renamed


# Our key -> the authors' key: the rules above read backwards, for naming a tensor the checkpoint lacks in the
# checkpoint's own terms. `authors_key` checks each answer by renaming it forwards again.
_BACKBONE_RULES_BACK = [
    (r"embeddings\.conv([12])\.(weight|bias)", lambda m: f"patch_embed.proj.{int(m[1]) - 1}.{m[2]}"),
    (r"embeddings\.layer_norm\.(weight|bias)", r"patch_embed.norm.\1"),
    (r"stages\.(\d+)\.downsample\.projection\.(weight|bias)", r"transition\1.proj.\2"),
    (r"stages\.(\d+)\.downsample\.layer_norm\.(weight|bias)", r"transition\1.norm.\2"),
    (r"stages\.(\d+)\.layer_norm\.(weight|bias)", lambda m: f"norm{int(m[1]) + 1}.{m[2]}"),
    (r"stages\.(\d+)\.layers\.(\d+)\.(.+)", lambda m: f"stage{int(m[1]) + 1}.{m[2]}.{{block}}{m[3]}"),
    (
        r"clustering_teacher\.stages\.(\d+)\.(\d+)\.(.+)",
        lambda m: f"paca_teacher.block{int(m[1]) + 1}.{m[2]}.{{mixer}}{m[3]}",
    ),
    (
        r"clustering_teacher\.downsamples\.(\d+)\.projection\.conv\.(.+)",
        lambda m: f"paca_teacher.transition{int(m[1]) + 1}.0.conv.{m[2]}",
    ),
    (
        r"clustering_teacher\.downsamples\.(\d+)\.projection\.norm\.(.+)",
        lambda m: f"paca_teacher.transition{int(m[1]) + 1}.2.{m[2]}",
    ),
    (r"clustering_teacher\.laterals\.(\d+)\.conv\.(.+)", lambda m: f"paca_teacher.lateral{int(m[1]) + 1}.0.{m[2]}"),
    (r"clustering_teacher\.laterals\.(\d+)\.norm\.(.+)", lambda m: f"paca_teacher.lateral{int(m[1]) + 1}.2.{m[2]}"),
    (r"clustering_teacher\.fusions\.(\d+)\.(.+)", lambda m: f"paca_teacher.fpn{int(m[1]) + 1}.{{mixer}}{m[2]}"),
    (
        r"clustering_teacher\.to_clusters\.(\d+)\.(weight|bias)",
        lambda m: f"paca_teacher.to_clusters{int(m[1]) + 1}.{m[2]}",
    ),
    (r"classifier\.(.+)", r"head.\1"),
]
_HEAD_RULES_BACK = [
    (r"stage_projections\.(\d+)\.conv\.weight", r"convs.\1.conv.weight"),
    (r"stage_projections\.(\d+)\.norm\.(.+)", r"convs.\1.bn.\2"),
    (
        r"(query_projection|clustering|output_projection)\.conv\.weight",
        lambda m: f"{_HEAD_MODULES_BACK[m[1]]}.conv.weight",
    ),
    (
        r"(query_projection|clustering|output_projection)\.norm\.(.+)",
        lambda m: f"{_HEAD_MODULES_BACK[m[1]]}.bn.{m[2]}",
    ),
    (r"to_clusters\.(weight|bias)", r"clustering.1.\1"),
    (r"(key|value)_projection\.dense\.(weight|bias)", lambda m: f"{m[1][0]}.0.{m[2]}"),
    (r"(key|value)_projection\.norm\.(.+)", lambda m: f"{m[1][0]}.2.{m[2]}"),
    (r"classifier\.(weight|bias)", r"conv_seg.\1"),
]
_HEAD_MODULES_BACK = {"query_projection": "q.0", "clustering": "clustering.0", "output_projection": "proj"}
_UPERNET_HEAD_RULES_BACK = [
    (r"((?:decode_head|auxiliary_head)\..+)\.batch_norm\.(.+)", r"\1.bn.\2"),
    (r"(decode_head|auxiliary_head)\.classifier\.(weight|bias)", r"\1.conv_seg.\2"),
    (r"((?:decode_head|auxiliary_head)\..+)", r"\1"),
]


def _authors_backbone_key(key: str, clustering_type: str) -> str:
    key = _apply_rules(key, _BACKBONE_RULES_BACK)
    if "{block}" in key:
        head, rest = key.split("{block}")
        match = re.fullmatch(r"attention\.clustering\.(\w+)\.(weight|bias)", rest)
        if match:
            positions = {layer: position for position, layer in _CLUSTERING_LAYERS[clustering_type].items()}
            return f"{head}attn.clustering.clustering.{positions[match[1]]}.{match[2]}"
        return head + next(old + rest[len(new) :] for old, new in _BLOCK_RENAMES if rest.startswith(new))
    if "{mixer}" in key:
        head, rest = key.split("{mixer}")
        return head + next(old + rest[len(new) :] for old, new in _MIXER_RENAMES if rest.startswith(new))
    return key


def authors_key(key: str, clustering_type: str, upernet: bool = False, backbone_prefix: str = "") -> str:
    """The authors' name for one of our keys (without the model's base prefix; `backbone.` included for UperNet), as
    `rename_key` reads it: `stages.1.layers.0.attention.q_proj.weight` -> `stage2.0.attn.q.weight`, with
    `backbone_prefix` (`backbone.` for mmseg / mmdet checkpoints) before the backbone's keys. Raises KeyError for a
    key the authors' models have no name for."""
    try:
        if upernet and not key.startswith("backbone."):
            authors = _apply_rules(key, _UPERNET_HEAD_RULES_BACK)
        elif key.startswith("decode_head."):
            authors = "decode_head." + _apply_rules(key[len("decode_head.") :], _HEAD_RULES_BACK)
        else:
            authors = backbone_prefix + _authors_backbone_key(key.removeprefix("backbone."), clustering_type)
    except (KeyError, StopIteration):
        raise KeyError(key) from None
    try:
        renamed = rename_key(authors, clustering_type, upernet=upernet)
    except KeyError:
        renamed = None
    if renamed != key:
        raise KeyError(key)
    return authors


def load_checkpoint(path: str | os.PathLike, with_class_names: bool = False):
    """The tensors of one of the authors' checkpoints (any usual wrapper), read without running code from the file
    (see `paca_hf.checkpoint_reader`); with `with_class_names`, `(tensors, class names the checkpoint's meta records
    or None)` (see [`class_names_in_meta`]). Raises `ConversionError`."""
    try:
        if with_class_names:
            source, meta = load_state_dict_and_meta(path)
            return source, class_names_in_meta(meta)
        return load_state_dict_file(path)
    except ConversionError:
        raise
    except CheckpointError as error:
        raise ConversionError(str(error)) from error


def is_upernet_checkpoint(source: dict[str, torch.Tensor]) -> bool:
    """Whether the keys are those of mmseg's `UPerHead` segmentor."""
    return any(key.startswith(("decode_head.psp_modules.", "decode_head.fpn_bottleneck.")) for key in source)


def is_detector_checkpoint(source: dict[str, torch.Tensor]) -> bool:
    """Whether the keys are those of an mmdet detector (a backbone plus neck / RPN / RoI heads)."""
    return any(key.startswith(DETECTOR_PREFIXES) for key in source)


def _key_pattern(key: str) -> str:
    return re.sub(r"\d+", "#", key)


def summarize_keys(keys, limit: int = 8) -> str:
    """`keys` grouped by their pattern with numbers as `#`
    (`stage#.#.attn.q.weight (x14, e.g. stage3.0.attn.q.weight)`), at most `limit` groups, the rest counted."""
    groups = defaultdict(list)
    for key in keys:
        groups[_key_pattern(key)].append(key)
    parts = [
        group[0] if len(group) == 1 else f"{pattern} (x{len(group)}, e.g. {group[0]})"
        for pattern, group in list(groups.items())[:limit]
    ]
    if len(groups) > limit:
        parts.append(f"... and {sum(len(group) for group in list(groups.values())[limit:])} more")
    return ", ".join(parts)


def summarize_prefixes(keys) -> str:
    """`neck. (8 tensors), rpn_head. (6 tensors)`: how many keys each top-level prefix has."""
    counts = Counter(key.split(".", 1)[0] + "." for key in keys)
    return ", ".join(f"{prefix} ({count} tensors)" for prefix, count in counts.items())


def _key_problems(wrong_shape, unexpected, missing, wrong_value=()) -> list[str]:
    """The parts of a mismatch message, one per non-empty group of checkpoint keys."""
    groups = (
        ("shape mismatch", wrong_shape),
        ("unexpected in the checkpoint", unexpected),
        ("missing from the checkpoint", missing),
        ("unexpected values", wrong_value),
    )
    return [f"{what} ({len(keys)}): {summarize_keys(keys)}" for what, keys in groups if keys]


def convert_state_dict(
    source: dict[str, torch.Tensor], model: torch.nn.Module, clustering_type: str, suggest: bool = True
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename the authors' tensors to the model's names, strictly: every source tensor must be used and every
    target tensor filled with the same shape, else `ConversionError` names the offending keys in the checkpoint's
    own names (missing ones as the checkpoint would name them), grouped and capped.

    Tensors the model has no place for by design are returned, not converted: mmseg's auxiliary head for the PaCa
    segmentor, an mmdet detector's neck and heads for `PaCaViTBackbone` (the caller reports them). With `suggest`,
    the error also names an official model whose layout the checkpoint fits.

    Returns `(renamed state dict, not converted keys)`."""
    from transformers import UperNetForSemanticSegmentation

    upernet = isinstance(model, UperNetForSemanticSegmentation)
    prefix = model.base_model_prefix + "." if hasattr(model, model.base_model_prefix) and not upernet else ""
    target = model.state_dict()
    converted, unused, unexpected, wrong_shape, wrong_value = {}, [], [], [], []
    mismatched = set()
    for key, tensor in source.items():
        if (key.startswith("auxiliary_head.") and not upernet) or key.startswith(DETECTOR_PREFIXES):
            unused.append(key)
            continue
        try:
            renamed = rename_key(key, clustering_type, upernet=upernet)
        except KeyError:
            unexpected.append(key)
            continue
        if renamed is None:
            if tensor.ndim != 4 or not torch.equal(tensor, _blur_filter(tensor.shape[0]).to(tensor.dtype)):
                wrong_value.append(f"{key} (expected the fixed [1, 2, 1] x [1, 2, 1] / 16 blur filter)")
            continue
        if not renamed.startswith(("classifier.", "decode_head.", "auxiliary_head.", "backbone.")):
            renamed = prefix + renamed
        if renamed not in target:
            unexpected.append(key)
        elif tuple(target[renamed].shape) != tuple(tensor.shape):
            wrong_shape.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(target[renamed].shape)}")
            mismatched.add(renamed)
        else:
            converted[renamed] = tensor
    missing = [
        _name_in_checkpoint(key, prefix, source, clustering_type, upernet)
        for key in sorted(set(target) - set(converted) - mismatched)
    ]
    problems = _key_problems(wrong_shape, unexpected, missing, wrong_value)
    if problems:
        hint = _matching_official_name(source, model) if suggest else None
        raise ConversionError(
            "The checkpoint does not match the model. " + " | ".join(problems) + (f" | {hint}" if hint else "")
        )
    return converted, unused


# mmdet's Mask R-CNN heads (`neck.`, `rpn_head.`, `roi_head.`) -> `PaCaViTMaskRCNNForInstanceSegmentation`
# (torchvision's module names). `_DETECTOR_HEAD_RULES_BACK` reads them backwards, to name a tensor the checkpoint
# lacks in the checkpoint's own terms.
_DETECTOR_HEAD_RULES = [
    (r"neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)", r"fpn.inner_blocks.\1.0.\2"),
    (r"neck\.fpn_convs\.(\d+)\.conv\.(weight|bias)", r"fpn.layer_blocks.\1.0.\2"),
    (r"rpn_head\.rpn_conv\.(weight|bias)", r"rpn.head.conv.0.0.\1"),
    (r"rpn_head\.rpn_cls\.(weight|bias)", r"rpn.head.cls_logits.\1"),
    (r"rpn_head\.rpn_reg\.(weight|bias)", r"rpn.head.bbox_pred.\1"),
    (r"roi_head\.bbox_head\.shared_fcs\.0\.(weight|bias)", r"roi_heads.box_head.fc6.\1"),
    (r"roi_head\.bbox_head\.shared_fcs\.1\.(weight|bias)", r"roi_heads.box_head.fc7.\1"),
    (r"roi_head\.bbox_head\.fc_cls\.(weight|bias)", r"roi_heads.box_predictor.cls_score.\1"),
    (r"roi_head\.bbox_head\.fc_reg\.(weight|bias)", r"roi_heads.box_predictor.bbox_pred.\1"),
    (r"roi_head\.mask_head\.convs\.(\d+)\.conv\.(weight|bias)", r"roi_heads.mask_head.\1.0.\2"),
    (r"roi_head\.mask_head\.upsample\.(weight|bias)", r"roi_heads.mask_predictor.conv5_mask.\1"),
    (r"roi_head\.mask_head\.conv_logits\.(weight|bias)", r"roi_heads.mask_predictor.mask_fcn_logits.\1"),
]
_DETECTOR_HEAD_RULES_BACK = [
    (r"fpn\.inner_blocks\.(\d+)\.0\.(weight|bias)", r"neck.lateral_convs.\1.conv.\2"),
    (r"fpn\.layer_blocks\.(\d+)\.0\.(weight|bias)", r"neck.fpn_convs.\1.conv.\2"),
    (r"rpn\.head\.conv\.0\.0\.(weight|bias)", r"rpn_head.rpn_conv.\1"),
    (r"rpn\.head\.cls_logits\.(weight|bias)", r"rpn_head.rpn_cls.\1"),
    (r"rpn\.head\.bbox_pred\.(weight|bias)", r"rpn_head.rpn_reg.\1"),
    (r"roi_heads\.box_head\.fc6\.(weight|bias)", r"roi_head.bbox_head.shared_fcs.0.\1"),
    (r"roi_heads\.box_head\.fc7\.(weight|bias)", r"roi_head.bbox_head.shared_fcs.1.\1"),
    (r"roi_heads\.box_predictor\.cls_score\.(weight|bias)", r"roi_head.bbox_head.fc_cls.\1"),
    (r"roi_heads\.box_predictor\.bbox_pred\.(weight|bias)", r"roi_head.bbox_head.fc_reg.\1"),
    (r"roi_heads\.mask_head\.(\d+)\.0\.(weight|bias)", r"roi_head.mask_head.convs.\1.conv.\2"),
    (r"roi_heads\.mask_predictor\.conv5_mask\.(weight|bias)", r"roi_head.mask_head.upsample.\1"),
    (r"roi_heads\.mask_predictor\.mask_fcn_logits\.(weight|bias)", r"roi_head.mask_head.conv_logits.\1"),
]


def _detector_head_tensor(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """mmdet's box classifier, box regression and mask logits in torchvision's class order: background first (mmdet
    puts it last in `fc_cls`), with zero deltas and a zero mask channel for it (mmdet has none)."""
    if key.startswith("roi_head.bbox_head.fc_cls."):
        return torch.cat([tensor[-1:], tensor[:-1]])
    if key.startswith("roi_head.bbox_head.fc_reg."):
        return torch.cat([tensor.new_zeros((4, *tensor.shape[1:])), tensor])
    if key.startswith("roi_head.mask_head.conv_logits."):
        return torch.cat([tensor.new_zeros((1, *tensor.shape[1:])), tensor])
    return tensor


def convert_detector_state_dict(
    source: dict[str, torch.Tensor], model: torch.nn.Module, clustering_type: str
) -> dict[str, torch.Tensor]:
    """An mmdet Mask R-CNN checkpoint (`backbone.`, `neck.`, `rpn_head.`, `roi_head.` keys) as the state dict of
    `PaCaViTMaskRCNNForInstanceSegmentation`, strictly: every source tensor used, every model tensor filled with the
    same shape (after adding torchvision's background row / deltas / mask channel), else `ConversionError` naming the
    offending keys in the checkpoint's own names (missing ones as the checkpoint would name them)."""
    target = model.state_dict()
    converted, unexpected, wrong_shape, problems = {}, [], [], []
    backbone = {key: tensor for key, tensor in source.items() if key.startswith("backbone.")}
    try:
        weights, _ = convert_state_dict(backbone, model.backbone, clustering_type, suggest=False)
        converted.update({"backbone." + key: tensor for key, tensor in weights.items()})
    except ConversionError as error:
        problems.append(str(error).removeprefix("The checkpoint does not match the model. "))
    for key, tensor in source.items():
        if key.startswith("backbone."):
            continue
        try:
            renamed = _apply_rules(key, _DETECTOR_HEAD_RULES)
        except KeyError:
            unexpected.append(key)
            continue
        tensor = _detector_head_tensor(key, tensor)
        if renamed not in target:
            unexpected.append(key)
        elif tuple(target[renamed].shape) != tuple(tensor.shape):
            wrong_shape.append(
                f"{key}: checkpoint {tuple(tensor.shape)} (in torchvision's layout) vs model "
                f"{tuple(target[renamed].shape)}"
            )
            converted[renamed] = None  # reported as a wrong shape, not as missing
        else:
            converted[renamed] = tensor
    missing = [
        _detector_head_name_in_checkpoint(key)
        for key in target
        if key not in converted and not key.startswith("backbone.")
    ]
    problems += _key_problems(wrong_shape, unexpected, missing)
    if problems:
        raise ConversionError("The checkpoint does not match the detector. " + " | ".join(problems))
    return converted


def _detector_head_name_in_checkpoint(key: str) -> str:
    try:
        return _apply_rules(key, _DETECTOR_HEAD_RULES_BACK)
    except KeyError:
        return f"{key} (this model's name; mmdet's Mask R-CNN has no such tensor)"


def _name_in_checkpoint(key: str, prefix: str, source, clustering_type: str, upernet: bool) -> str:
    """A tensor the checkpoint lacks, named as the checkpoint would name it (`backbone.` before the backbone's keys
    when its other keys have it); our own name, marked as such, where the authors' models have none."""
    backbone_prefix = "backbone." if upernet or any(name.startswith("backbone.") for name in source) else ""
    try:
        return authors_key(key.removeprefix(prefix) if prefix else key, clustering_type, upernet, backbone_prefix)
    except KeyError:
        return f"{key} (this model's name; the authors' models have no such tensor)"


def _stage_depths(source: dict[str, torch.Tensor]) -> list[int]:
    """Blocks per stage in the authors' keys (`stage3.9.attn.q.weight`: stage 3 has at least 10 blocks)."""
    blocks = defaultdict(set)
    for key in source:
        match = re.match(r"(?:backbone\.)?stage(\d+)\.(\d+)\.", key)
        if match:
            blocks[int(match[1])].add(int(match[2]))
    return [len(blocks[stage]) for stage in sorted(blocks)]


def _matching_official_name(source: dict[str, torch.Tensor], model) -> str | None:
    """'this looks like NAME' when the checkpoint's tensors fit an official model of the same kind exactly."""
    from transformers import UperNetForSemanticSegmentation

    kind = type(model)
    depths = _stage_depths(source)
    for release in RELEASES:
        if (release.form == UPERNET) != (kind is UperNetForSemanticSegmentation):
            continue
        if depths != list(SIZES[release.architecture.size]["depths"]):
            continue  # cheap test before building the candidate
        # a backbone extracted from a detector fits the detector releases' backbones
        task = BACKBONE if release.form == DETECTOR and kind.__name__ == "PaCaViTBackbone" else release.task
        try:
            with torch.device("meta"):
                config = build_config(release.official_name, source, task=task)
                candidate = (
                    build_model(config, task)
                    if kind is not UperNetForSemanticSegmentation
                    else UperNetForSemanticSegmentation(config)
                )
            if type(candidate) is not kind:
                continue
            convert_state_dict(source, candidate, release.architecture.clustering_type, suggest=False)
        except (ConversionError, ValueError, KeyError):
            continue
        return f"this looks like {release.official_name} (pass --config {release.official_name})"
    return None


_AUTHORS_CLUSTERING_TYPES = {"P2CConv2d": "conv", "P2CMlp": "mlp", "P2CLinear": "linear"}


def config_from_authors_settings(arch_cfg: dict, paca_cfg: dict, **kwargs) -> PaCaViTConfig:
    """Our config for a model given in the authors' terms (`arch_cfg` with embed_dims/num_heads/mlp_ratios/depths,
    `paca_cfg` with type/clusters/onsite_clustering/clustering_kernel_size), for checkpoints of custom models."""
    return PaCaViTConfig(
        hidden_sizes=arch_cfg["embed_dims"],
        depths=arch_cfg["depths"],
        num_attention_heads=arch_cfg["num_heads"],
        mlp_ratios=arch_cfg["mlp_ratios"],
        num_clusters=paca_cfg["clusters"],
        clustering_type=_AUTHORS_CLUSTERING_TYPES[paca_cfg["type"]],
        clustering_kernel_size=paca_cfg["clustering_kernel_size"],
        clustering_interval=paca_cfg["onsite_clustering"],
        **kwargs,
    )


def _num_labels_in_checkpoint(source: dict[str, torch.Tensor]) -> int | None:
    for key in ("head.weight", "backbone.head.weight", "decode_head.conv_seg.weight"):
        if key in source:
            return source[key].shape[0]
    return None


def upernet_config(backbone_config: PaCaViTConfig, source: dict[str, torch.Tensor] | None = None, **kwargs):
    """transformers' `UperNetConfig` for a PaCa-ViT backbone with mmseg's UperNet heads as the authors configure them
    (pool scales 1/2/3/6, 512 channels, auxiliary FCN head on stage 3 with 256 channels, loss weight 0.4, ADE20k's
    150 classes). With `source` (an mmseg checkpoint), channels, classes, the auxiliary head's depth and whether it
    concatenates its input (`FCNHead(concat_input=True)`: a `conv_cat`) are read from its tensors instead."""
    from transformers import UperNetConfig

    from .configuration_pacavit import load_id2label

    backbone_config = PaCaViTConfig.from_dict(backbone_config.to_dict())
    backbone_config.out_features = list(backbone_config.stage_names)
    settings = {
        "hidden_size": 512,
        "auxiliary_channels": 256,
        "auxiliary_num_convs": 1,
        "auxiliary_concat_input": False,
        "num_labels": None,
    }
    if source is not None:
        settings["hidden_size"] = source["decode_head.bottleneck.conv.weight"].shape[0]
        settings["num_labels"] = source["decode_head.conv_seg.weight"].shape[0]
        for key, dim in (("auxiliary_head.conv_seg.weight", 1), ("auxiliary_head.convs.0.conv.weight", 0)):
            if key in source:
                settings["auxiliary_channels"] = source[key].shape[dim]
                break
        if any(key.startswith("auxiliary_head.") for key in source):
            settings["auxiliary_num_convs"] = len(
                {key.split(".")[2] for key in source if key.startswith("auxiliary_head.convs.")}
            )
            settings["auxiliary_concat_input"] = "auxiliary_head.conv_cat.conv.weight" in source
    num_labels = settings.pop("num_labels")
    id2label = load_id2label("ade20k") if num_labels in (None, 150) else {i: f"LABEL_{i}" for i in range(num_labels)}
    options = dict(
        backbone_config=backbone_config,
        pool_scales=[1, 2, 3, 6],
        use_auxiliary_head=source is None or any(key.startswith("auxiliary_head.") for key in source),
        auxiliary_in_channels=backbone_config.hidden_sizes[2],
        auxiliary_loss_weight=0.4,
        loss_ignore_index=255,
        id2label=id2label,
        label2id={label: index for index, label in id2label.items()},
        **settings,
    )
    options.update(kwargs)
    return UperNetConfig(**options)


def detector_config(
    backbone_config: PaCaViTConfig, source: dict[str, torch.Tensor] | None = None, class_names=None, **kwargs
):
    """`PaCaViTMaskRCNNConfig` around a PaCa-ViT backbone (all stages out), with mmdetection's Mask R-CNN settings
    as the authors configure them (FPN 256, box head 1024, mask head 4 x 256) and COCO's 80 classes. With `source`
    (an mmdet Mask R-CNN state dict) the FPN, RPN, box and mask head sizes and the number of classes are read from
    its tensors. Class names: `class_names` (e.g. the checkpoint's `meta.dataset_meta.classes`) when it names every
    class, else COCO's (mmdetection's order) for 80 classes, else `LABEL_i`.

    Raises:
        `ConversionError`: a `source` without the tensors the sizes are read from (named), or a box classifier and
            mask head that disagree on the number of classes.
    """
    from .configuration_pacavit import load_id2label
    from .configuration_pacavit_mask_rcnn import PaCaViTMaskRCNNConfig

    backbone = PaCaViTConfig.from_dict(backbone_config.to_dict())
    backbone.out_features = list(backbone.stage_names)
    settings = _detector_head_sizes(source) if source is not None else {"num_labels": 80}
    num_labels = settings.pop("num_labels")
    names = [str(name) for name in class_names] if class_names is not None else []
    if len(names) == num_labels:
        id2label = dict(enumerate(names))
    elif num_labels == 80:
        id2label = load_id2label("coco")
    else:
        id2label = {index: f"LABEL_{index}" for index in range(num_labels)}
    options = dict(
        backbone_config=backbone,
        id2label=id2label,
        label2id={label: index for index, label in id2label.items()},
        **settings,
    )
    options.update(kwargs)
    return PaCaViTMaskRCNNConfig(**options)


def _detector_head_sizes(source: dict[str, torch.Tensor]) -> dict:
    """The head sizes of an mmdet Mask R-CNN state dict, as `PaCaViTMaskRCNNConfig` arguments (and `num_labels`)."""
    needed = {
        "fpn_hidden_size": ("neck.lateral_convs.0.conv.weight", 0),
        "rpn_hidden_size": ("rpn_head.rpn_conv.weight", 0),
        "box_head_hidden_size": ("roi_head.bbox_head.shared_fcs.0.weight", 0),
        "mask_head_hidden_size": ("roi_head.mask_head.convs.0.conv.weight", 0),
        "num_labels": ("roi_head.bbox_head.fc_cls.weight", 0),
    }
    missing = [key for key, _ in needed.values() if key not in source]
    if missing:
        raise ConversionError(
            f"The checkpoint is not an mmdet Mask R-CNN with an FPN, an RPN and box / mask heads: it has no "
            f"{', '.join(missing)}."
        )
    settings = {name: source[key].shape[dim] for name, (key, dim) in needed.items()}
    settings["num_labels"] -= 1  # mmdet's box classifier has a background column (the last)
    mask_classes = source.get("roi_head.mask_head.conv_logits.weight")
    if mask_classes is not None and mask_classes.shape[0] != settings["num_labels"]:
        raise ConversionError(
            f"The checkpoint's box classifier has {settings['num_labels']} classes (+ background) but its mask head "
            f"(roi_head.mask_head.conv_logits.weight) has {mask_classes.shape[0]}; mmdet's Mask R-CNN has one mask "
            "per class."
        )
    settings["num_mask_head_convs"] = len(
        {key.split(".")[3] for key in source if key.startswith("roi_head.mask_head.convs.")}
    )
    box_inputs = source["roi_head.bbox_head.shared_fcs.0.weight"].shape[1] // settings["fpn_hidden_size"]
    side = math.isqrt(box_inputs)
    if side * side == box_inputs:  # else the strict conversion names the mis-shaped tensor
        settings["box_roi_output_size"] = side
    return settings


def class_names_in_meta(meta) -> list[str] | None:
    """The class names an mmdet checkpoint's `meta` records (`dataset_meta.classes` in mmdet 3, `CLASSES` in mmdet 2),
    or None."""
    if not isinstance(meta, dict):
        return None
    dataset_meta = meta.get("dataset_meta")
    names = dataset_meta.get("classes") if isinstance(dataset_meta, dict) else meta.get("CLASSES")
    if isinstance(names, (list, tuple)) and names and all(isinstance(name, str) for name in names):
        return list(names)
    return None


def official_config(name: str):
    """The full config of an official release: `PaCaViTConfig.from_official_name`, or for an UperNet segmentor
    (`upernet_...`) the `UperNetConfig` around that PaCa-ViT backbone with the authors' head settings, or for a COCO
    Mask R-CNN (`mask_rcnn_...`) the `PaCaViTMaskRCNNConfig` around it (COCO's 80 classes)."""
    config = PaCaViTConfig.from_official_name(name)
    form = next((release.form for release in RELEASES if release.official_name == name), None)
    if form == UPERNET:
        return upernet_config(config)
    if form == DETECTOR:
        return detector_config(config)
    return config


def build_config(config, source: dict[str, torch.Tensor], task: str = "image-classification", class_names=None):
    """The config named by `config` (official name, config.json path or object) with `num_labels` from the
    checkpoint's head. For an UperNet checkpoint, the `UperNetConfig` around that PaCa-ViT backbone config (its heads'
    sizes from the checkpoint); a config.json may also be an `UperNetConfig`'s. For an mmdet Mask R-CNN checkpoint
    with `task="instance-segmentation"`, the `PaCaViTMaskRCNNConfig` around the backbone config ([`detector_config`]:
    head sizes and classes from the checkpoint, names from `class_names`); with `task="backbone"`, the backbone's."""
    from transformers import UperNetConfig

    from .configuration_pacavit_mask_rcnn import PaCaViTMaskRCNNConfig

    detector = is_detector_checkpoint(source)
    if detector and task not in (INSTANCE_SEGMENTATION, BACKBONE):
        heads = summarize_prefixes(key for key in source if key.startswith(DETECTOR_PREFIXES))
        raise ConversionError(
            f"The checkpoint is an mmdet detector (besides its backbone: {heads}): convert it with --task "
            f"{INSTANCE_SEGMENTATION} (the whole Mask R-CNN) or --task {BACKBONE} (its backbone alone), not --task "
            f"{task}."
        )
    if task == INSTANCE_SEGMENTATION and not detector:
        raise ConversionError(
            f"--task {INSTANCE_SEGMENTATION} converts an mmdet Mask R-CNN checkpoint (keys under backbone., neck., "
            "rpn_head. and roi_head.); this checkpoint has no detector heads."
        )
    if isinstance(config, (PaCaViTConfig, UperNetConfig, PaCaViTMaskRCNNConfig)):
        config = type(config).from_dict(config.to_dict())
    elif str(config) in OFFICIAL_NAMES:
        config = official_config(str(config))
    elif Path(config).is_file() or Path(config).is_dir():
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(config)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ConversionError(
                f"--config {str(config)!r} is not a readable transformers config.json ({type(error).__name__}: "
                f"{str(error)[:300]})."
            ) from error
        if not isinstance(config, (PaCaViTConfig, UperNetConfig, PaCaViTMaskRCNNConfig)):
            raise ConversionError(
                f"--config holds a {type(config).__name__}, not a PaCa-ViT, UperNet or PaCa-ViT Mask R-CNN config."
            )
    else:
        raise ConversionError(
            f"--config {str(config)!r} is neither an official name ({', '.join(OFFICIAL_NAMES)}) nor a config.json."
        )
    if isinstance(config, PaCaViTMaskRCNNConfig):
        config = config.backbone_config
    if task == INSTANCE_SEGMENTATION:
        if not isinstance(config, PaCaViTConfig):
            raise ConversionError(
                f"--config for a Mask R-CNN must be a PaCa-ViT config, not a {type(config).__name__}."
            )
        return detector_config(config, source, class_names)
    if isinstance(config, UperNetConfig) or is_upernet_checkpoint(source):
        if task != "semantic-segmentation":
            raise ConversionError(f"An UperNet segmentor converts with --task semantic-segmentation, not {task}.")
        if isinstance(config, PaCaViTConfig):
            config = upernet_config(config, source)
        return config
    num_labels = _num_labels_in_checkpoint(source)
    if num_labels is not None and num_labels != config.num_labels and task != BACKBONE:
        config.id2label = {index: f"LABEL_{index}" for index in range(num_labels)}
        config.label2id = {label: index for index, label in config.id2label.items()}
    return config


def build_model(config, task: str):
    """A freshly initialised model of the task's class for `config` (UperNet for an `UperNetConfig`)."""
    from transformers import UperNetConfig, UperNetForSemanticSegmentation

    from . import modeling_pacavit

    classes = {
        "image-classification": "PaCaViTForImageClassification",
        "semantic-segmentation": "PaCaViTForSemanticSegmentation",
        "backbone": "PaCaViTBackbone",
    }
    if task not in classes and task != INSTANCE_SEGMENTATION:
        raise ConversionError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    if isinstance(config, UperNetConfig):
        return UperNetForSemanticSegmentation(config)
    if task == INSTANCE_SEGMENTATION:
        from .modeling_pacavit_mask_rcnn import PaCaViTMaskRCNNForInstanceSegmentation

        return PaCaViTMaskRCNNForInstanceSegmentation(config)
    return getattr(modeling_pacavit, classes[task])(config)


def _clustering_type(config) -> str:
    return getattr(config, "backbone_config", config).clustering_type


def convert_source(source: dict[str, torch.Tensor], config, task: str, class_names=None):
    """Our model (eval mode) holding exactly the tensors of `source` (an authors' state dict) and the keys left out by
    design (mmseg's auxiliary head for the PaCa segmentor; a detector's neck and heads with `task="backbone"`), which
    are logged by prefix and count. `class_names` names a detector's classes (see [`detector_config`])."""
    config = build_config(config, source, task, class_names)
    model = build_model(config, task)
    if task == INSTANCE_SEGMENTATION:
        weights, unused = convert_detector_state_dict(source, model, _clustering_type(config)), []
    else:
        weights, unused = convert_state_dict(source, model, _clustering_type(config))
    if unused:
        logger.warning(f"Not converted ({len(unused)} tensors, no part of this model): {summarize_prefixes(unused)}")
    model.load_state_dict(weights, strict=True)
    return model.eval(), unused


def convert_model(checkpoint: str | os.PathLike, config, task: str):
    """Read one of the authors' checkpoints and return our model (eval mode) holding exactly its weights."""
    source, class_names = load_checkpoint(checkpoint, with_class_names=True)
    return convert_source(source, config, task, class_names)[0]
