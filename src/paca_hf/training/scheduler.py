"""The recipes' learning-rate schedules: mmseg's linear warm-up from a small factor, then poly decay (the ADE20k
fine-tune); mmdetection's linear warm-up by iteration with steps down by epoch (the COCO fine-tune, "1x").

transformers' `get_polynomial_decay_schedule_with_warmup` warms up from 0 (not from `start_factor`) and ends at an
absolute `lr_end` shared by all groups, so it does not give mmseg's numbers; this is a `LambdaLR` factor instead,
which keeps every parameter group's multiplier.
"""

import logging

import torch


logger = logging.getLogger(__name__)


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


class MultiStepWithWarmup:
    """mmdetection's 1x schedule (`configs/_base_/schedules/schedule_1x.py` of the authors' detection code):
    `LinearLR(start_factor, by_epoch=False, end=warmup_steps)` and `MultiStepLR(milestones, gamma)`, which
    mmengine multiplies, as a factor of each group's learning rate at (0-based) optimiser step `step`:

        warm-up:  start_factor + (1 - start_factor) * step / warmup   for step < warmup, else 1
        steps:    gamma ** (number of milestones <= step)

    `milestones` are optimiser steps (the epochs' boundaries: epoch 8 of 12 starts at step 8 x steps per epoch).
    """

    def __init__(self, warmup_steps: int, milestones, start_factor: float = 0.001, gamma: float = 0.1):
        self.warmup_steps = int(warmup_steps)
        self.milestones = sorted(int(milestone) for milestone in milestones)
        self.start_factor = float(start_factor)
        self.gamma = float(gamma)

    def __call__(self, step: int) -> float:
        warmup = 1.0
        if step < self.warmup_steps:
            warmup = self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps
        return warmup * self.gamma ** sum(step >= milestone for milestone in self.milestones)


def follow_schedule(
    scheduler: torch.optim.lr_scheduler.LambdaLR, optimizer: torch.optim.Optimizer, schedule, step: int
) -> None:
    """After loading a checkpoint: `LambdaLR` restores its schedule's settings from it (e.g. another
    `--max_train_steps`); continue with `schedule` (this run's, same class) instead, from optimiser step `step`,
    with a warning when they differ."""
    if scheduler.lr_lambdas[0].__dict__ != schedule.__dict__:
        logger.warning(
            "The schedule differs from the checkpoint's (%s); continuing with %s.",
            scheduler.lr_lambdas[0].__dict__,
            schedule.__dict__,
        )
        for fn in scheduler.lr_lambdas:
            fn.__dict__.update(schedule.__dict__)
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base_lr * schedule(step)


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    start_factor: float = 1e-6,
    power: float = 1.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` that applies [`PolyWithWarmup`] to every parameter group (step it once per optimiser step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, PolyWithWarmup(warmup_steps, total_steps, start_factor, power))


def whole_run_warmup_warning(
    warmup_steps: int, total_steps: int, learning_rate: float, factor, warmup: str, run: str, where: str, advice: str
) -> str | None:
    """A warning to print at the start of a run whose `total_steps` all fall in the warm-up (`warmup_steps >=
    total_steps > 0`), naming the highest learning rate it will reach: `learning_rate x factor(total_steps - 1)`,
    with `factor(step)` the schedule's factor at (0-based) optimiser step `step` (rising through the warm-up); None
    otherwise. `warmup` and `run` say how the two lengths were set (the flags), `where` qualifies the peak, `advice`
    says what to change. Both training scripts word it through here."""
    if total_steps <= 0 or warmup_steps < total_steps:
        return None
    peak = learning_rate * factor(total_steps - 1)
    return (
        f"{warmup} is not less than {run}: the whole run is warm-up, so the learning rate peaks at {peak:.3g} "
        f"({where}) instead of --learning_rate {learning_rate:.3g}. {advice}"
    )


def warmup_warning(
    warmup_steps: int, total_steps: int, learning_rate: float, start_factor: float = 1e-6, power: float = 1.0
) -> str | None:
    """[`whole_run_warmup_warning`] for the fine-tune's [`PolyWithWarmup`] schedule and flags."""
    return whole_run_warmup_warning(
        warmup_steps,
        total_steps,
        learning_rate,
        PolyWithWarmup(warmup_steps, total_steps, start_factor, power),
        warmup=f"--num_warmup_steps {warmup_steps}",
        run=f"--max_train_steps {total_steps}",
        where="at the last step; times the groups' multipliers",
        advice="Lower --num_warmup_steps for a short run.",
    )
