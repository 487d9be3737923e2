"""Pieces of the ADE20k fine-tuning script (`scripts/finetune_ade20k.py`), importable so that tests can use them.

* the authors' optimiser recipe: parameter groups (`param_groups`) and the warm-up + poly schedule
  (`PolyWithWarmup`, `make_scheduler`);
* data: loading `image` / `annotation` datasets (Hub id, local folder or the built-in scenes), label names,
  a seeded epoch sampler (`EpochSampler`) and a collate function that leaves augmentation to the training loop;
* the model: `build_model` (from a converted checkpoint, re-initialising the tensors whose shape changes, or from
  a config) with a report of what was loaded;
* checkpoints that are written completely before they replace anything (`save_checkpoint`), verified before
  they are resumed from (`verify_checkpoint`, `resolve_resume_checkpoint`), with the augmentation RNG
  (`TrainingState`);
* guards: a non-finite loss or parameter stops the run (`check_finite_loss`, `check_finite_parameters`);
* evaluation: whole-image inference, logits upsampled to each label map, mIoU with the shipped `mean_iou`
  metric (`evaluate_segmentation`).
"""

import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
CHECKPOINT_FORMAT = 1
_CHECKPOINT_NAME = re.compile(r"^(step|epoch)_(\d+)$")
_TMP_PREFIX = ".tmp-"
BUILTIN_SCENES = "builtin-scenes"
ADE20K_NAMES = ("scene_parse_150", "ade20k", "ade_20k", "ade20k-id2label")


# ----------------------------------------------------------------------------------------------------------
# errors


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what to do."""


class CheckpointError(TrainingError):
    """A checkpoint that cannot be resumed from (missing, partial, corrupt or not matching the run)."""


class NonFiniteError(TrainingError):
    """The loss or the parameters became NaN / infinite: the run stops before anything non-finite is saved."""


# ----------------------------------------------------------------------------------------------------------
# optimiser recipe

NORM_MODULE_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def _norm_parameter_names(model: nn.Module) -> set:
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, NORM_MODULE_TYPES):
            for parameter_name, _ in module.named_parameters(recurse=False):
                names.add(f"{module_name}.{parameter_name}" if module_name else parameter_name)
    return names


def is_decode_head_parameter(name: str) -> bool:
    return name.startswith("decode_head.") or ".decode_head." in name


def is_clustering_output_parameter(name: str) -> bool:
    """The backbone's clustering output layers: `...attention.clustering.to_clusters.*` (conv, mlp and linear
    clustering) and the teacher's `...clustering_teacher.to_clusters.N.*`."""
    return ".to_clusters." in f".{name}" and not is_decode_head_parameter(name)


def param_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    head_lr_mult: float = 10.0,
    clustering_lr_mult: float = 10.0,
    norm_decay_mult: float = 0.0,
) -> List[dict]:
    """AdamW parameter groups of the authors' ADE20k recipe (mmseg `paramwise_cfg`):

    * learning rate x `head_lr_mult` for the decode head (`decode_head.*`) and x `clustering_lr_mult` for the
      backbone's clustering output layers (`to_clusters`);
    * weight decay x `norm_decay_mult` (0) for every normalisation parameter: parameters whose name contains
      "norm" (mmseg's `custom_keys={"norm": ...}` matches names by substring; ours are `layer_norm`,
      `layernorm_before/after`, `cluster_norm`, `norm` for BatchNorm) and, to be safe, every parameter of a
      LayerNorm / BatchNorm / GroupNorm / InstanceNorm module whatever its name.

    Each group carries `lr_mult`, `decay_mult`, `name` and `param_names` (for logging and tests).
    """
    norm_names = _norm_parameter_names(model)
    groups: Dict[Tuple[float, float], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if is_decode_head_parameter(name):
            lr_mult, kind = head_lr_mult, "head"
        elif is_clustering_output_parameter(name):
            lr_mult, kind = clustering_lr_mult, "to_clusters"
        else:
            lr_mult, kind = 1.0, "backbone"
        is_norm = name in norm_names or "norm" in name
        decay_mult = norm_decay_mult if is_norm else 1.0
        key = (lr_mult, decay_mult)
        if key not in groups:
            groups[key] = {
                "params": [],
                "param_names": [],
                "lr": learning_rate * lr_mult,
                "weight_decay": weight_decay * decay_mult,
                "lr_mult": lr_mult,
                "decay_mult": decay_mult,
                "kinds": set(),
            }
        groups[key]["params"].append(parameter)
        groups[key]["param_names"].append(name)
        groups[key]["kinds"].add(kind + ("/norm" if is_norm else ""))
    out = []
    for (lr_mult, decay_mult), group in sorted(groups.items()):
        group["name"] = f"lr x{lr_mult:g}, decay x{decay_mult:g} ({', '.join(sorted(group.pop('kinds')))})"
        out.append(group)
    return out


def describe_param_groups(groups: Sequence[dict]) -> str:
    lines = []
    for group in groups:
        count = sum(p.numel() for p in group["params"])
        lines.append(
            f"  {group['name']}: {len(group['params'])} tensors, {count:,} parameters, lr {group['lr']:.3g}, "
            f"weight decay {group['weight_decay']:.3g}"
        )
    return "\n".join(lines)


class PolyWithWarmup:
    """mmseg's `LinearLR(start_factor, end=warmup_steps)` then `PolyLR(power, eta_min=0, end=total_steps)`, as a
    factor of each group's learning rate at (0-based) optimiser step `step`:

        step < warmup:  start_factor + (1 - start_factor) * step / warmup
        otherwise:      (1 - (step - warmup) / (total - warmup)) ** power, 0 from `total` on
    """

    def __init__(self, warmup_steps: int, total_steps: int, start_factor: float = 1e-6, power: float = 1.0):
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.start_factor = float(start_factor)
        self.power = float(power)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps
        span = self.total_steps - self.warmup_steps
        if span <= 0:
            return 1.0
        return max(0.0, 1.0 - (step - self.warmup_steps) / span) ** self.power


def make_scheduler(optimizer, warmup_steps: int, total_steps: int, start_factor: float = 1e-6, power: float = 1.0):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, PolyWithWarmup(warmup_steps, total_steps, start_factor, power)
    )


# ----------------------------------------------------------------------------------------------------------
# data


class EpochSampler(torch.utils.data.Sampler):
    """A permutation of `range(num_samples)` that is a pure function of `(seed, epoch)` (no global RNG), so that
    a resumed run sees the same order. `set_epoch` picks the epoch (accelerate calls it too)."""

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True):
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.num_samples))
        rng = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=rng).tolist())

    def __len__(self) -> int:
        return self.num_samples


def image_to_tensor(image) -> torch.Tensor:
    """(3, H, W) uint8 tensor from a PIL image (any mode) or an (H, W[, C]) array."""
    if hasattr(image, "convert"):
        image = image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.shape[-1] == 4:
        array = array[..., :3]
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1).contiguous()


def label_to_tensor(annotation) -> torch.Tensor:
    """(H, W) int64 tensor from a PIL label map (mode L / P / I) or an array."""
    array = np.array(annotation)
    if array.ndim == 3:
        array = array[..., 0]
    return torch.from_numpy(array.astype(np.int64))


def collate_segmentation(examples: Sequence[dict]) -> dict:
    """Lists (images may differ in size): `images` (3, H, W) uint8 and `labels` (H, W) int64, raw annotation
    values. Augmentation and label reduction happen later, in the training loop."""
    return {
        "images": [image_to_tensor(example["image"]) for example in examples],
        "labels": [label_to_tensor(example["annotation"]) for example in examples],
    }


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
    dataset_config_name: Optional[str] = None,
    train_val_split: float = 0.15,
    seed: int = 0,
    num_train_images: Optional[int] = None,
    num_eval_images: Optional[int] = None,
    builtin_image_size: int = 128,
    cache_dir: Optional[str] = None,
    trust_remote_code: bool = False,
):
    """`(train, validation)` datasets with `image` and `annotation` columns.

    `dataset_name` is a Hub id (`scene_parse_150`), a local folder that `datasets.load_dataset` reads (parquet /
    image folders, e.g. from `paca_hf.data.scenes.save_scenes_to_disk`) or that `datasets.load_from_disk` reads,
    or `builtin-scenes` (generated in memory: `num_train_images` (200) and `num_eval_images` (50) disjoint scenes
    of `builtin_image_size` pixels). Without a validation split, `train_val_split` of the training set is held
    out (seeded)."""
    import datasets

    if dataset_name == BUILTIN_SCENES:
        from .data.scenes import make_scene_splits

        splits = make_scene_splits(
            num_train=num_train_images or 200,
            num_validation=num_eval_images or 50,
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
    train = _rename_columns(dataset["train"])
    validation = None
    for name in ("validation", "val", "test"):
        if name in dataset:
            validation = _rename_columns(dataset[name])
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


def resolve_id2label(
    dataset_name: str,
    reduce_labels: bool,
    train_dataset=None,
    id2label_file: Optional[str] = None,
    ignore_index: int = 255,
    max_scan: int = 2000,
) -> Dict[int, str]:
    """Class names of the dataset, indexed by the labels the model is trained on (after label reduction):

    `--id2label_file`; else the built-in scenes' names; else `id2label.json` in a local dataset folder; else
    ADE20k's 150 names for `scene_parse_150` / ADE20k; else `LABEL_i` up to the largest annotation value found
    in (up to `max_scan` images of) the training set."""
    from .configuration_pacavit import load_id2label

    def finish(names: Dict[int, str], includes_background: bool) -> Dict[int, str]:
        names = {int(k): str(v) for k, v in names.items()}
        if reduce_labels and includes_background:
            names = {k - 1: v for k, v in names.items() if k > 0}
        elif not reduce_labels and not includes_background:
            names = {0: "other", **{k + 1: v for k, v in names.items()}}
        return dict(sorted(names.items()))

    if id2label_file is not None:
        names = json.loads(Path(id2label_file).read_text())
        # A file is taken to be indexed like the model's labels (after reduction).
        return {int(k): str(v) for k, v in sorted(names.items(), key=lambda kv: int(kv[0]))}
    if dataset_name == BUILTIN_SCENES:
        from .data.scenes import id2label

        return finish(id2label(include_background=True), includes_background=True)
    local = Path(dataset_name) / "id2label.json"
    if local.is_file():
        return {int(k): str(v) for k, v in sorted(json.loads(local.read_text()).items(), key=lambda kv: int(kv[0]))}
    lowered = dataset_name.lower()
    if any(name in lowered for name in ADE20K_NAMES):
        return finish(load_id2label("ade20k"), includes_background=False)
    if train_dataset is None:
        raise TrainingError(f"Cannot tell the classes of {dataset_name!r}: pass --id2label_file.")
    largest = 0
    for index in range(min(len(train_dataset), max_scan)):
        values = np.unique(np.array(train_dataset[index]["annotation"]))
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


# ----------------------------------------------------------------------------------------------------------
# model


def parse_num_clusters(value: Optional[str], base: Sequence[int]) -> List[int]:
    """`--num_clusters`: "keep" (None) keeps `base`; one number replaces every non-zero stage count (stages without
    clusters keep 0, as the authors' 200/200/200/0); a comma list gives every stage."""
    if value is None or str(value).lower() == "keep":
        return list(base)
    parts = [int(part) for part in str(value).replace(" ", "").split(",") if part != ""]
    if len(parts) == 1:
        return [parts[0] if count > 0 else 0 for count in base]
    if len(parts) != len(base):
        raise TrainingError(f"--num_clusters {value!r} has {len(parts)} entries but the model has {len(base)} stages.")
    return parts


@dataclass
class InitReport:
    """What `build_model` did with a checkpoint's tensors."""

    source: str
    loaded: List[str] = field(default_factory=list)
    reinitialized: List[Tuple[str, list, list]] = field(default_factory=list)  # (name, checkpoint shape, new shape)
    newly_initialized: List[str] = field(default_factory=list)
    unused: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "loaded": sorted(self.loaded),
            "reinitialized": [
                {"name": name, "checkpoint_shape": list(old), "model_shape": list(new)}
                for name, old, new in sorted(self.reinitialized)
            ],
            "newly_initialized": sorted(self.newly_initialized),
            "unused": sorted(self.unused),
        }

    def summary(self) -> str:
        lines = [f"Initialisation from {self.source}: {len(self.loaded)} tensors loaded"]
        if self.reinitialized:
            lines.append(f"  re-initialised (shape changed) ({len(self.reinitialized)}):")
            lines += [f"    {name}: checkpoint {tuple(old)} -> model {tuple(new)}" for name, old, new in
                      sorted(self.reinitialized)]
        if self.newly_initialized:
            prefixes = sorted({".".join(name.split(".")[:2]) for name in self.newly_initialized})
            lines.append(
                f"  newly initialised (not in the checkpoint) ({len(self.newly_initialized)}): "
                f"under {', '.join(prefixes)}"
            )
        if self.unused:
            lines.append(f"  unused checkpoint tensors ({len(self.unused)}): {', '.join(sorted(self.unused))}")
        return "\n".join(lines)


def _label_kwargs(id2label: Dict[int, str]) -> dict:
    return {
        "num_labels": len(id2label),
        "id2label": dict(id2label),
        "label2id": {name: index for index, name in id2label.items()},
    }


def build_model(
    id2label: Dict[int, str],
    model_name_or_path: Optional[str] = None,
    config_name: Optional[str] = None,
    num_clusters: Optional[str] = "200",
    config_overrides: Optional[dict] = None,
    cache_dir: Optional[str] = None,
):
    """`(model, report)`: a `PaCaViTForSemanticSegmentation` for the classes `id2label`.

    From `model_name_or_path` (a converted checkpoint folder or Hub id, e.g. an ImageNet classifier): every tensor
    of the checkpoint whose name and shape match is loaded; tensors whose shape changes (the clustering output
    layers when `num_clusters` changes, e.g. 100 -> 200, the head's classifier for other classes) are
    re-initialised; the decode head is new. From `config_name` (an official name or a config.json): trained from
    scratch. `report` (an `InitReport`) names every tensor in each case. A new decode head's output layers get
    mmseg's init from the model's own `_init_weights`."""
    from transformers.utils import logging as hf_logging

    from .configuration_pacavit import OFFICIAL_NAMES, PaCaViTConfig
    from .modeling_pacavit import PaCaViTForSemanticSegmentation

    overrides = dict(config_overrides or {})
    labels = _label_kwargs(id2label)
    if model_name_or_path is not None:
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
    for key in ("id2label", "label2id", "num_labels", "_name_or_path", "transformers_version", "model_type",
                "architectures"):
        config_dict.pop(key, None)
    config_dict.update(labels)
    config_dict["num_clusters"] = parse_num_clusters(num_clusters, config.num_clusters)
    config_dict.update(overrides)
    config = PaCaViTConfig(**config_dict)
    model = PaCaViTForSemanticSegmentation(config)
    report = InitReport(source=f"config {config_name} (from scratch)")
    report.newly_initialized = sorted(model.state_dict())
    return model, report


def recipe_image_processor(crop_size: int, reduce_labels: bool):
    """The image processor saved with the model: mmseg's whole-image evaluation resize (shorter side to the crop
    size, bilinear, no crop), ImageNet normalisation; `do_reduce_labels` as in training."""
    from .convert import default_image_processor

    processor = default_image_processor("semantic-segmentation")
    processor.size = {"shortest_edge": int(crop_size)}
    processor.do_reduce_labels = bool(reduce_labels)
    return processor


# ----------------------------------------------------------------------------------------------------------
# training state and guards


class TrainingState:
    """Progress and the augmentation RNG, saved with `accelerator.register_for_checkpointing`.

    Every process has its own `torch.Generator` (seeded with `seed` and the process index). Call `gather` on every
    process just before `accelerator.save_state` (it is a collective): the main process then saves all
    generators' states, and on loading each process takes its own."""

    def __init__(self, seed: int, process_index: int = 0, num_processes: int = 1):
        self.seed = int(seed)
        self.process_index = int(process_index)
        self.num_processes = int(num_processes)
        self.generator = torch.Generator().manual_seed(self.seed * 7919 + 104729 * self.process_index + 1)
        self.step = 0
        self._gathered: Optional[List[torch.Tensor]] = None

    def gather(self, accelerator) -> None:
        state = self.generator.get_state()
        if self.num_processes > 1:
            states = accelerator.gather(state[None].to(accelerator.device)).cpu()
            self._gathered = [row.clone() for row in states]
        else:
            self._gathered = [state.clone()]

    def state_dict(self) -> dict:
        states = self._gathered if self._gathered is not None else [self.generator.get_state()]
        return {"format": 1, "step": self.step, "seed": self.seed, "num_processes": self.num_processes,
                "generator_states": states}

    def load_state_dict(self, state: dict) -> None:
        states = state["generator_states"]
        if len(states) != self.num_processes:
            raise CheckpointError(
                f"The checkpoint was written by {len(states)} process(es) but this run has {self.num_processes}: "
                f"an exact resume needs the same number of processes (and batch settings)."
            )
        self.step = int(state["step"])
        self.generator.set_state(states[self.process_index])


def segmentation_loss(outputs, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """The loss a training step optimises: the model's own (0 for a batch whose pixels are all ignored)."""
    return outputs.loss


def check_finite_loss(loss: torch.Tensor, step: int, accelerator=None) -> None:
    """Raise `NonFiniteError` (on every process) when the loss is NaN or infinite on any process."""
    finite = torch.isfinite(loss.detach()).all().reshape(1).float()
    if accelerator is not None and accelerator.num_processes > 1:
        finite = accelerator.gather(finite).min().reshape(1)
    if finite.item() < 1.0:
        raise NonFiniteError(
            f"The loss became non-finite ({loss.detach().float().item()}) at step {step}: training stopped before "
            f"this step's update, and nothing was saved for it (checkpoints already written hold finite weights). "
            f"Lower --learning_rate, check the data, or use --mixed_precision no."
        )


def non_finite_parameters(model: nn.Module) -> List[str]:
    bad = []
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad.append(name)
    return bad


def check_finite_parameters(model: nn.Module, step: int, what: str) -> None:
    bad = non_finite_parameters(model)
    if bad:
        raise NonFiniteError(
            f"The weights became non-finite by step {step} ({len(bad)} tensors, e.g. {', '.join(bad[:3])}): "
            f"training stopped and the {what} was not written. Lower --learning_rate."
        )


# ----------------------------------------------------------------------------------------------------------
# checkpoints


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                break
            digest.update(block)
        os.fsync(handle.fileno())
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_complete_marker(folder: Path, info: dict) -> dict:
    """Write `COMPLETE` into `folder` last: JSON with `info` and every file's size and sha256 (files are fsynced
    first). A folder without it was not written completely."""
    folder = Path(folder)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative in (COMPLETE_MARKER, COMPLETE_MARKER + ".tmp"):
            continue
        files[relative] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    marker = {"format": CHECKPOINT_FORMAT, **info, "files": files, "written_at": time.time()}
    tmp = folder / (COMPLETE_MARKER + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(marker, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, folder / COMPLETE_MARKER)
    _fsync_dir(folder)
    return marker


def verify_checkpoint(folder, check_hashes: bool = True) -> dict:
    """The `COMPLETE` marker of `folder` after checking every listed file (size, and sha256 unless
    `check_hashes=False`); `CheckpointError` saying what is wrong otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"Checkpoint {str(folder)!r} does not exist or is not a folder.")
    marker_path = folder / COMPLETE_MARKER
    if not marker_path.is_file():
        raise CheckpointError(
            f"Checkpoint {str(folder)!r} is incomplete: it has no {COMPLETE_MARKER} marker, which is written last, "
            f"so it was interrupted while being saved (or was not written by this script). Resume from an earlier "
            f"checkpoint, or use --resume_from_checkpoint latest to pick the newest complete one."
        )
    try:
        marker = json.loads(marker_path.read_text())
        files = marker["files"]
        int(marker["step"])
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"Checkpoint {str(folder)!r} has an unreadable {COMPLETE_MARKER} marker ({error}).")
    problems = []
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        size = path.stat().st_size
        if size != expected["size"]:
            problems.append(f"{name} has {size} bytes, expected {expected['size']} (truncated or overwritten)")
        elif check_hashes and _sha256(path) != expected["sha256"]:
            problems.append(f"{name} does not match its recorded sha256 (corrupted)")
    if not any(name.startswith("model") for name in files):
        problems.append("it holds no model weights")
    if problems:
        raise CheckpointError(f"Checkpoint {str(folder)!r} is corrupt: {'; '.join(problems)}.")
    return marker


def list_checkpoints(output_dir) -> List[Path]:
    """Checkpoint folders (`step_N`, `epoch_N`) in `output_dir`, complete or not."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    return sorted(p for p in output_dir.iterdir() if p.is_dir() and _CHECKPOINT_NAME.match(p.name))


def partial_saves(output_dir) -> List[Path]:
    """Leftovers of saves that were interrupted before their rename (`.tmp-step_N`)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    return sorted(p for p in output_dir.iterdir() if p.is_dir() and p.name.startswith(_TMP_PREFIX))


def find_latest_checkpoint(output_dir) -> Tuple[Optional[Path], List[Tuple[Path, str]]]:
    """`(newest complete checkpoint or None, [(skipped folder, reason), ...])`, newest by the step recorded in
    each marker. Partial and corrupt folders are skipped (and returned, so that they can be reported)."""
    best, best_step, skipped = None, -1, []
    for folder in list_checkpoints(output_dir):
        try:
            marker = verify_checkpoint(folder)
        except CheckpointError as error:
            skipped.append((folder, str(error)))
            continue
        if int(marker["step"]) > best_step:
            best, best_step = folder, int(marker["step"])
    for folder in partial_saves(output_dir):
        skipped.append((folder, f"{str(folder)!r} is an interrupted save (never completed)"))
    return best, skipped


def resolve_resume_checkpoint(value: Optional[str], output_dir) -> Tuple[Optional[Path], List[str]]:
    """The folder `--resume_from_checkpoint` names, verified, and warnings to log.

    * a path (or a folder name inside `output_dir`): must be a complete, intact checkpoint, else
      `CheckpointError` (never silently skipped);
    * `latest`: the newest complete checkpoint in `output_dir`; partial or corrupt ones are skipped with a
      warning naming them; if there are checkpoint folders but none is usable, `CheckpointError`; if there are
      none at all, training starts from the beginning (with a warning), so that a job can always be restarted
      with `--resume_from_checkpoint latest`.
    """
    if value is None or value == "":
        return None, []
    if value == "latest":
        best, skipped = find_latest_checkpoint(output_dir)
        warnings = [f"--resume_from_checkpoint latest skipped {reason}" for _, reason in skipped]
        if best is not None:
            return best, warnings
        if list_checkpoints(output_dir):
            raise CheckpointError(
                f"--resume_from_checkpoint latest: no usable checkpoint in {str(output_dir)!r}; "
                + " | ".join(reason for _, reason in skipped)
            )
        return None, warnings + [f"--resume_from_checkpoint latest: no checkpoint in {str(output_dir)!r} yet, "
                                 f"starting from the beginning."]
    folder = Path(value)
    if not folder.exists() and output_dir is not None and (Path(output_dir) / value).exists():
        folder = Path(output_dir) / value
    verify_checkpoint(folder)
    return folder, []


def save_checkpoint(
    accelerator,
    output_dir,
    name: str,
    info: dict,
    training_state: Optional[TrainingState] = None,
    total_limit: Optional[int] = None,
) -> Path:
    """`accelerator.save_state` into `output_dir/.tmp-NAME`, then (main process) the `COMPLETE` marker, then a
    rename to `output_dir/NAME`; only then are older checkpoints beyond `total_limit` removed. A save that is
    interrupted leaves the earlier checkpoints untouched and a `.tmp-` folder that resuming ignores.
    Collective: call it on every process."""
    output_dir = Path(output_dir)
    final = output_dir / name
    tmp = output_dir / f"{_TMP_PREFIX}{name}"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    if training_state is not None:
        training_state.gather(accelerator)
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_complete_marker(tmp, info)
        if final.exists():
            _remove_folder(final)
        os.replace(tmp, final)
        _fsync_dir(output_dir)
        if total_limit is not None and total_limit > 0:
            prune_checkpoints(output_dir, keep=total_limit, protect=final)
        for leftover in partial_saves(output_dir):
            logger.warning(f"Removing {leftover}, left by an interrupted save.")
            _remove_folder(leftover)
    accelerator.wait_for_everyone()
    return final


def _remove_folder(folder: Path) -> None:
    """Rename first (so a half-deleted folder never looks like a checkpoint), then delete."""
    doomed = folder.with_name(f".deleting-{folder.name}-{os.getpid()}-{time.time_ns()}")
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def prune_checkpoints(output_dir, keep: int, protect: Optional[Path] = None) -> List[Path]:
    """Delete the oldest complete checkpoints so that `keep` remain (never `protect`); incomplete ones are left
    for the user to look at."""
    complete = []
    for folder in list_checkpoints(output_dir):
        try:
            marker = verify_checkpoint(folder, check_hashes=False)
        except CheckpointError:
            continue
        complete.append((int(marker["step"]), folder))
    complete.sort()
    removed = []
    for _, folder in complete[: max(0, len(complete) - keep)]:
        if protect is not None and folder.resolve() == Path(protect).resolve():
            continue
        _remove_folder(folder)
        removed.append(folder)
    return removed


def load_checkpoint(accelerator, folder: Path) -> None:
    """`accelerator.load_state`, with failures reported as `CheckpointError`."""
    try:
        accelerator.load_state(str(folder))
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - anything unreadable becomes a clear message
        raise CheckpointError(
            f"Could not resume from {str(folder)!r}: {type(error).__name__}: {error}. It may come from a different "
            f"model / optimizer setup, or be damaged."
        ) from error


# ----------------------------------------------------------------------------------------------------------
# evaluation


def reduce_labels_tensor(labels: torch.Tensor) -> torch.Tensor:
    from .augment import reduce_zero_label

    return reduce_zero_label(labels)


@torch.no_grad()
def predict_batch(model, images: List[torch.Tensor], eval_transform, device) -> List[torch.Tensor]:
    """Whole-image inference (mmseg `mode="whole"`): resize + normalise + pad (the eval transform), logits upsampled
    to the padded input, cropped to each image's resized area, then resized bilinearly to the image's original
    size; argmax. Returns one (H, W) int64 map per image (on `device`)."""
    pixel_values, sizes = eval_transform(images, device=device)
    logits = model(pixel_values=pixel_values).logits.float()
    logits = F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
    predictions = []
    for index, (image, (height, width)) in enumerate(zip(images, sizes)):
        cropped = logits[index : index + 1, :, :height, :width]
        original = tuple(image.shape[-2:])
        if tuple(cropped.shape[-2:]) != original:
            cropped = F.interpolate(cropped, size=original, mode="bilinear", align_corners=False)
        predictions.append(cropped[0].argmax(dim=0))
    return predictions


def evaluate_segmentation(
    model,
    dataloader,
    accelerator,
    eval_transform,
    num_labels: int,
    reduce_labels: bool,
    ignore_index: int = 255,
    keep_predictions: bool = False,
    disable_progress: bool = True,
) -> Tuple[dict, Optional[List[Tuple[np.ndarray, np.ndarray]]]]:
    """mIoU of `model` over `dataloader` (prepared by accelerate; batches from `collate_segmentation`), computed by
    the shipped `mean_iou` evaluate metric on the main process from predictions gathered with
    `accelerator.gather_for_metrics`. Returns `(metrics, pairs)`; `pairs` (prediction, reference) uint16 arrays
    only with `keep_predictions`. Every process returns the same metrics."""
    from tqdm.auto import tqdm

    from .metrics import load_metric

    was_training = model.training
    model.eval()
    metric = load_metric("mean_iou", experiment_id=f"paca-{os.getpid()}-{time.time_ns()}", keep_in_memory=True)
    kept = [] if keep_predictions else None
    for batch in tqdm(dataloader, desc="eval", disable=disable_progress, leave=False):
        predictions = predict_batch(model, batch["images"], eval_transform, accelerator.device)
        pairs = []
        for prediction, label in zip(predictions, batch["labels"]):
            reference = reduce_labels_tensor(label) if reduce_labels else label.long()
            pairs.append((prediction.cpu().numpy().astype(np.uint16), reference.cpu().numpy().astype(np.uint16)))
        pairs = accelerator.gather_for_metrics(pairs, use_gather_object=True)
        if accelerator.is_main_process:
            metric.add_batch(predictions=[p for p, _ in pairs], references=[r for _, r in pairs])
            if kept is not None:
                kept.extend(pairs)
    results = None
    if accelerator.is_main_process:
        results = metric.compute(num_labels=num_labels, ignore_index=ignore_index, reduce_labels=False)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        holder = [results]
        broadcast_object_list(holder, from_process=0)
        results = holder[0]
    if was_training:
        model.train()
    return results, kept


def metrics_to_json(metrics: dict, id2label: Dict[int, str], prefix: str = "eval_") -> dict:
    """JSON-safe metrics (NaN -> None), per-category values keyed by class name."""

    def clean(value):
        value = float(value)
        return None if math.isnan(value) else value

    out = {}
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        out[prefix + key] = clean(metrics[key])
    for key in ("per_category_iou", "per_category_accuracy"):
        if key in metrics:
            out[prefix + key] = {id2label.get(i, str(i)): clean(v) for i, v in enumerate(metrics[key])}
    return out


# ----------------------------------------------------------------------------------------------------------
# misc


def weight_checksums(model: nn.Module) -> Dict[str, str]:
    """sha256 of every parameter and buffer (bytes on the CPU), for comparing processes or runs."""
    out = {}
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        if data.dtype == torch.bfloat16:
            data = data.float()
        out[name] = hashlib.sha256(data.numpy().tobytes()).hexdigest()
    return out


def batch_stream(
    dataloader, sampler: EpochSampler, start_epoch: int, skip_batches: int, skip_fn: Callable
) -> Iterator[Tuple[int, dict]]:
    """Endless `(epoch, batch)` over epochs of a prepared loader: epoch `start_epoch` starts after
    `skip_batches` batches (`skip_fn` = `accelerator.skip_first_batches`)."""
    epoch, skip = start_epoch, skip_batches
    while True:
        if hasattr(dataloader, "set_epoch"):
            dataloader.set_epoch(epoch)
        sampler.set_epoch(epoch)
        loader = skip_fn(dataloader, skip) if skip else dataloader
        for batch in loader:
            yield epoch, batch
        epoch, skip = epoch + 1, 0


__all__ = [
    "BUILTIN_SCENES",
    "COMPLETE_MARKER",
    "CheckpointError",
    "EpochSampler",
    "InitReport",
    "NonFiniteError",
    "PolyWithWarmup",
    "TrainingError",
    "TrainingState",
    "batch_stream",
    "build_model",
    "check_finite_loss",
    "segmentation_loss",
    "check_finite_parameters",
    "collate_segmentation",
    "describe_param_groups",
    "evaluate_segmentation",
    "find_latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_segmentation_splits",
    "make_scheduler",
    "metrics_to_json",
    "param_groups",
    "parse_num_clusters",
    "predict_batch",
    "prune_checkpoints",
    "recipe_image_processor",
    "resolve_id2label",
    "resolve_resume_checkpoint",
    "save_checkpoint",
    "verify_checkpoint",
    "weight_checksums",
    "write_complete_marker",
]
