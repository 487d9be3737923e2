"""AdamW parameter groups of the authors' ADE20k recipe (mmseg's `paramwise_cfg`): learning-rate multipliers for
the decode head and the clustering output layers, no weight decay on normalisation parameters."""

from collections.abc import Sequence

from torch import nn


NORM_MODULE_TYPES = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def _norm_parameter_names(model: nn.Module) -> set[str]:
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
) -> list[dict]:
    """AdamW parameter groups of the authors' ADE20k recipe (mmseg `paramwise_cfg`):

    * learning rate x `head_lr_mult` for the decode head (`decode_head.*`) and x `clustering_lr_mult` for the
      backbone's clustering output layers (`to_clusters`);
    * weight decay x `norm_decay_mult` (0) for every normalisation parameter: parameters whose name contains
      "norm" (mmseg's `custom_keys={"norm": ...}` matches names by substring; ours are `layer_norm`,
      `layernorm_before/after`, `cluster_norm`, `norm` for BatchNorm) and, to be safe, every parameter of a
      LayerNorm / BatchNorm / GroupNorm / InstanceNorm module whatever its name.

    Each group carries `lr_mult`, `decay_mult`, `name` and `param_names` (for logging and tests); groups are
    sorted by `(lr_mult, decay_mult)`. Parameters with `requires_grad=False` are left out.
    """
    norm_names = _norm_parameter_names(model)
    groups: dict[tuple[float, float], dict] = {}
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
        group = groups.setdefault(
            (lr_mult, decay_mult),
            {
                "params": [],
                "param_names": [],
                "lr": learning_rate * lr_mult,
                "weight_decay": weight_decay * decay_mult,
                "lr_mult": lr_mult,
                "decay_mult": decay_mult,
                "kinds": set(),
            },
        )
        group["params"].append(parameter)
        group["param_names"].append(name)
        group["kinds"].add(kind + ("/norm" if is_norm else ""))
    out = []
    for (lr_mult, decay_mult), group in sorted(groups.items()):
        group["name"] = f"lr x{lr_mult:g}, decay x{decay_mult:g} ({', '.join(sorted(group.pop('kinds')))})"
        out.append(group)
    return out


def describe_param_groups(groups: Sequence[dict]) -> str:
    """One line per group of [`param_groups`]: tensors, parameters, learning rate and weight decay."""
    lines = []
    for group in groups:
        count = sum(p.numel() for p in group["params"])
        lines.append(
            f"  {group['name']}: {len(group['params'])} tensors, {count:,} parameters, lr {group['lr']:.3g}, "
            f"weight decay {group['weight_decay']:.3g}"
        )
    return "\n".join(lines)
