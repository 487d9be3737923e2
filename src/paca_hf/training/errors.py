"""Errors of a training run, and the guards that stop a run before anything non-finite is saved."""

import torch
from torch import nn


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what to do."""


class CheckpointError(TrainingError):
    """A checkpoint that cannot be resumed from (missing, partial, corrupt or not matching the run)."""


class NonFiniteError(TrainingError):
    """The loss or the parameters became NaN / infinite: the run stops before anything non-finite is saved."""


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


def non_finite_parameters(model: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of `model` that hold a NaN or an infinity."""
    bad = []
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad.append(name)
    return bad


def check_finite_parameters(model: nn.Module, step: int, what: str, accelerator=None) -> None:
    """Raise `NonFiniteError` naming the step and `what` was about to be written when any weight is non-finite; with
    an `accelerator` of several processes, on every process when any process finds one (under FSDP each process
    holds only a shard of the weights)."""
    bad = non_finite_parameters(model)
    if accelerator is not None and accelerator.num_processes > 1:
        anywhere = accelerator.gather(torch.tensor([float(len(bad))], device=accelerator.device)).max().item()
        if anywhere and not bad:
            bad = ["(on another process)"]
    if bad:
        raise NonFiniteError(
            f"The weights became non-finite by step {step} ({len(bad)} tensors, e.g. {', '.join(bad[:3])}): "
            f"training stopped and the {what} was not written. Lower --learning_rate."
        )
