"""Conversion of the authors' PaCa-ViT checkpoints (timm classifiers, mmseg segmentors) to transformers folders."""

import os
import pickle
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch
from transformers.utils import logging

from .configuration_pacavit import OFFICIAL_NAMES, PaCaViTConfig
from .loading import default_image_processor  # noqa: F401 (hub.py imports it from here)


logger = logging.get_logger(__name__)

TASKS = ("image-classification", "semantic-segmentation", "backbone")


class ConversionError(ValueError):
    """A checkpoint that cannot be converted exactly (unreadable, untrusted, or not matching the model)."""


# Authors' key -> our key, tried in order; the first pattern that matches the whole key wins. A replacement of None
# marks a tensor that carries no weights of its own and is checked instead (see `_check_constant`).
_BACKBONE_RULES = [
    (r"patch_embed\.proj\.(\d)\.(weight|bias)", r"embeddings.projection.\1.\2"),
    (r"patch_embed\.norm\.(weight|bias)", r"embeddings.layer_norm.\1"),
    (r"transition(\d+)\.proj\.(weight|bias)", lambda m: f"stages.{m[1]}.downsample.projection.{m[2]}"),
    (r"transition(\d+)\.norm\.(weight|bias)", lambda m: f"stages.{m[1]}.downsample.layer_norm.{m[2]}"),
    (r"norm(\d+)\.(weight|bias)", lambda m: f"stages.{int(m[1]) - 1}.layer_norm.{m[2]}"),
    (r"stage(\d+)\.(\d+)\.(.+)", lambda m: f"stages.{int(m[1]) - 1}.layers.{m[2]}.{_block_key(m[3])}"),
    (r"paca_teacher\.block(\d+)\.(\d+)\.(.+)", lambda m: f"{_teacher_stage(m[1])}.{m[2]}.{_mixer_key(m[3])}"),
    (r"paca_teacher\.transition(\d+)\.0\.blur_filter", None),
    (r"paca_teacher\.transition(\d+)\.0\.conv\.(.+)", lambda m: f"{_teacher('downsamples', m[1])}.projection.conv.{m[2]}"),
    (r"paca_teacher\.transition(\d+)\.2\.(.+)", lambda m: f"{_teacher('downsamples', m[1])}.projection.norm.{m[2]}"),
    (r"paca_teacher\.lateral(\d+)\.0\.(.+)", lambda m: f"{_teacher('laterals', m[1])}.conv.{m[2]}"),
    (r"paca_teacher\.lateral(\d+)\.2\.(.+)", lambda m: f"{_teacher('laterals', m[1])}.norm.{m[2]}"),
    (r"paca_teacher\.fpn(\d+)\.(.+)", lambda m: f"{_teacher('fusions', m[1])}.{_mixer_key(m[2])}"),
    (r"paca_teacher\.to_clusters(\d+)\.(weight|bias)", lambda m: f"{_teacher('to_clusters', m[1])}.{m[2]}"),
]

_BLOCK_RENAMES = [
    ("norm1_before.", "layernorm_before."),
    ("norm2_before.", "layernorm_after."),
    ("attn.q.", "attention.query."),
    ("attn.k.", "attention.key."),
    ("attn.v.", "attention.value."),
    ("attn.proj.", "attention.dense."),
    ("attn.cluster_norm.", "attention.cluster_norm."),
    ("mlp.fc1.", "mlp.dense1."),
    ("mlp.fc2.", "mlp.dense2."),
    ("mlp.dwconv.dwconv.", "mlp.depthwise_conv."),
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


def _head_kv(name: str) -> str:
    return {"k": "key_projection", "v": "value_projection"}[name]


def _teacher(part: str, stage: str) -> str:
    return f"clustering_teacher.{part}.{int(stage) - 1}"


def _teacher_stage(stage: str) -> str:
    return f"clustering_teacher.stages.{int(stage) - 1}"


def _mixer_key(key: str) -> str:
    """Inside a ConvMixer block: `0.fn.0` depthwise conv, `0.fn.2` its BN, `1` pointwise conv, `3` its BN."""
    for old, new in (("0.fn.0.", "depthwise.conv."), ("0.fn.2.", "depthwise.norm."), ("1.", "pointwise.conv."),
                     ("3.", "pointwise.norm.")):
        if key.startswith(old):
            return new + key[len(old):]
    raise KeyError(key)


def _block_key(key: str) -> str:
    match = re.fullmatch(r"attn\.clustering\.clustering\.(\d)\.(weight|bias)", key)
    if match:
        return f"attention.clustering.{{clustering}}{match[1]}.{match[2]}"
    for old, new in _BLOCK_RENAMES:
        if key.startswith(old):
            return new + key[len(old):]
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


def rename_key(key: str, clustering_type: str) -> str | None:
    """Our name for one of the authors' keys (`backbone.` / `decode_head.` prefixes of mmseg included); None for
    the teacher's fixed blur filters. Raises KeyError for keys that belong to no part of the model."""
    if key.startswith("decode_head."):
        return "decode_head." + _apply_rules(key[len("decode_head."):], _HEAD_RULES)
    key = key.removeprefix("backbone.")
    if key.startswith("head."):
        return "classifier." + key[len("head."):]
    renamed = _apply_rules(key, _BACKBONE_RULES)
    if renamed is not None and "{clustering}" in renamed:
        position = re.search(r"\{clustering\}(\d)", renamed)[1]
        layer = _CLUSTERING_LAYERS[clustering_type].get(position)
        if layer is None:
            raise KeyError(key)
        renamed = renamed.replace("{clustering}" + position, layer)
    return renamed


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint without running code from it: a plain state dict or one wrapped in `state_dict`, `model`
    or `state_dict_ema` (mmseg's `{"meta", "state_dict"}` included), with any DistributedDataParallel `module.`
    prefix removed."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"Checkpoint {str(path)!r} does not exist or is not a file.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ConversionError(
            f"Refused to load {str(path)!r}: it is not a plain tensor checkpoint (loading it would need to run code "
            f"from the file, which is never done for untrusted checkpoints). Details: {error}"
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise ConversionError(
            f"Could not read checkpoint {str(path)!r}: the file is truncated or corrupt ({type(error).__name__}: "
            f"{error})."
        ) from error
    if isinstance(checkpoint, dict):
        for wrapper in ("state_dict", "model", "state_dict_ema"):
            if isinstance(checkpoint.get(wrapper), dict):
                checkpoint = checkpoint[wrapper]
                break
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ConversionError(f"Checkpoint {str(path)!r} holds no state dict (got {type(checkpoint).__name__}).")
    non_tensors = [key for key, value in checkpoint.items() if not isinstance(value, torch.Tensor)]
    if non_tensors:
        raise ConversionError(f"Checkpoint {str(path)!r} has entries that are not tensors: {non_tensors[:10]}.")
    if all(key.startswith("module.") for key in checkpoint):
        checkpoint = {key[len("module."):]: value for key, value in checkpoint.items()}
    return dict(checkpoint)


def convert_state_dict(
    source: dict[str, torch.Tensor], model: torch.nn.Module, clustering_type: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename the authors' tensors to the model's names, strictly: every source tensor must be used and every
    target tensor filled with the same shape, else `ConversionError` names every offending key.

    Returns the renamed state dict and the keys of mmseg's auxiliary head, which the PaCa segmentor does not use
    (the caller reports them)."""
    prefix = model.base_model_prefix + "." if hasattr(model, model.base_model_prefix) else ""
    target = model.state_dict()
    converted, unused, unexpected, wrong_shape, wrong_value = {}, [], [], [], []
    mismatched = set()
    for key, tensor in source.items():
        if key.startswith("auxiliary_head."):
            unused.append(key)
            continue
        try:
            renamed = rename_key(key, clustering_type)
        except KeyError:
            unexpected.append(key)
            continue
        if renamed is None:
            if tensor.ndim != 4 or not torch.equal(tensor, _blur_filter(tensor.shape[0]).to(tensor.dtype)):
                wrong_value.append(f"{key} (expected the fixed [1, 2, 1] x [1, 2, 1] / 16 blur filter)")
            continue
        if not renamed.startswith(("classifier.", "decode_head.")):
            renamed = prefix + renamed
        if renamed not in target:
            unexpected.append(key)
        elif tuple(target[renamed].shape) != tuple(tensor.shape):
            wrong_shape.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(target[renamed].shape)}")
            mismatched.add(renamed)
        else:
            converted[renamed] = tensor
    missing = sorted(set(target) - set(converted) - mismatched)
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected in the checkpoint ({len(unexpected)}): {', '.join(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatch ({len(wrong_shape)}): {'; '.join(wrong_shape)}")
    if wrong_value:
        problems.append(f"unexpected values ({len(wrong_value)}): {'; '.join(wrong_value)}")
    if problems:
        raise ConversionError("The checkpoint does not match the model. " + " | ".join(problems))
    return converted, unused


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


def build_config(config: str | os.PathLike | PaCaViTConfig, source: dict[str, torch.Tensor]) -> PaCaViTConfig:
    """The config named by `config` (official name, config.json path or object) with `num_labels` from the
    checkpoint's head."""
    if isinstance(config, PaCaViTConfig):
        config = PaCaViTConfig.from_dict(config.to_dict())
    elif str(config) in OFFICIAL_NAMES:
        config = PaCaViTConfig.from_official_name(str(config))
    elif Path(config).is_file() or Path(config).is_dir():
        config = PaCaViTConfig.from_pretrained(config)
    else:
        raise ConversionError(
            f"--config {str(config)!r} is neither an official name ({', '.join(OFFICIAL_NAMES)}) nor a config.json."
        )
    num_labels = _num_labels_in_checkpoint(source)
    if num_labels is not None and num_labels != config.num_labels:
        config.id2label = {index: f"LABEL_{index}" for index in range(num_labels)}
        config.label2id = {label: index for index, label in config.id2label.items()}
    return config


def build_model(config: PaCaViTConfig, task: str):
    from . import modeling_pacavit

    classes = {
        "image-classification": "PaCaViTForImageClassification",
        "semantic-segmentation": "PaCaViTForSemanticSegmentation",
        "backbone": "PaCaViTBackbone",
    }
    if task not in classes:
        raise ConversionError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    return getattr(modeling_pacavit, classes[task])(config)


def write_atomically(output_dir: str | os.PathLike, write) -> Path:
    """Call `write(tmp_dir)` in a fresh folder beside `output_dir` and move it into place only once `write` has
    returned; on any error the temporary folder is removed and an existing `output_dir` is left untouched."""
    output_dir = Path(output_dir).resolve()
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        write(tmp_dir)
        if output_dir.exists():
            old_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
            os.replace(output_dir, old_dir / "previous")
            try:
                os.replace(tmp_dir, output_dir)
            except BaseException:
                os.replace(old_dir / "previous", output_dir)
                raise
            shutil.rmtree(old_dir, ignore_errors=True)
        else:
            os.replace(tmp_dir, output_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return output_dir


def convert_model(checkpoint: str | os.PathLike, config: str | os.PathLike | PaCaViTConfig, task: str):
    """Read one of the authors' checkpoints and return our model (eval mode) holding exactly its weights."""
    source = load_checkpoint(checkpoint)
    config = build_config(config, source)
    model = build_model(config, task)
    weights, unused = convert_state_dict(source, model, config.clustering_type)
    if unused:
        logger.warning(f"Not converted: {len(unused)} tensors of mmseg's auxiliary head, unused by the model: {unused}")
    model.load_state_dict(weights, strict=True)
    return model.eval()


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    config: str | os.PathLike | PaCaViTConfig,
    output_dir: str | os.PathLike,
    task: str = "image-classification",
    push_to_hub: str | None = None,
):
    """Convert one of the authors' checkpoints into a transformers folder (`config.json` with an `auto_map`,
    `model.safetensors`, `preprocessor_config.json` and the package's source files for `trust_remote_code`) and
    return the model. Nothing is written unless the conversion is exact and the written folder loads back to the
    same outputs; nothing is uploaded unless the folder was written."""
    from .hub import add_remote_code, upload_repo

    model = convert_model(checkpoint, config, task)
    image_processor = default_image_processor(task)

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        image_processor.save_pretrained(folder)
        add_remote_code(folder, task)
        verify_folder(folder, model)

    output_dir = write_atomically(output_dir, write)
    if push_to_hub:
        from huggingface_hub import HfApi

        files = sorted(path.name for path in output_dir.iterdir())
        upload_repo(HfApi(), push_to_hub, output_dir, files, "Upload PaCa-ViT converted from the authors' checkpoint")
    return model


@torch.no_grad()
def verify_folder(folder: Path, model) -> None:
    """Reload a written folder: its tensors must equal the model's bit for bit and it must compute the same
    outputs (up to float summation order, which differs with memory layout)."""
    reloaded = type(model).from_pretrained(folder).eval()
    expected_state, actual_state = model.state_dict(), reloaded.state_dict()
    differing = [key for key in expected_state if not torch.equal(expected_state[key], actual_state.get(key))]
    if differing or expected_state.keys() != actual_state.keys():
        raise ConversionError(f"The written folder does not hold the converted tensors ({differing[:5]}).")
    pixel_values = torch.randn(1, model.config.num_channels, 64, 80, generator=torch.Generator().manual_seed(0))
    expected, actual = model(pixel_values), reloaded(pixel_values)
    for name, value in expected.items():
        if isinstance(value, torch.Tensor) and not torch.allclose(value, actual[name], atol=1e-5, rtol=1e-5):
            raise ConversionError(f"The written folder does not reproduce the model's `{name}`.")
