"""The recipe's learning-rate schedule: mmseg's linear warm-up from a small factor, then poly decay.

transformers' `get_polynomial_decay_schedule_with_warmup` warms up from 0 (not from `start_factor`) and ends at an
absolute `lr_end` shared by all groups, so it does not give mmseg's numbers; this is a `LambdaLR` factor instead,
which keeps every parameter group's multiplier.
"""

import torch


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


def make_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, start_factor: float = 1e-6,
    power: float = 1.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` that applies [`PolyWithWarmup`] to every parameter group (step it once per optimiser step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, PolyWithWarmup(warmup_steps, total_steps, start_factor, power))


def warmup_warning(warmup_steps: int, total_steps: int, learning_rate: float, start_factor: float = 1e-6,
                   power: float = 1.0) -> str | None:
    """A warning to print at the start of a run whose `total_steps` all fall in the warm-up (`warmup_steps >=
    total_steps > 0`), naming the highest learning rate the run will reach (at its last step); None otherwise."""
    if total_steps <= 0 or warmup_steps < total_steps:
        return None
    peak = learning_rate * PolyWithWarmup(warmup_steps, total_steps, start_factor, power)(total_steps - 1)
    return (
        f"--num_warmup_steps {warmup_steps} is not less than --max_train_steps {total_steps}: the whole run is "
        f"warm-up, so the learning rate peaks at {peak:.3g} (at the last step; times the groups' multipliers) "
        f"instead of --learning_rate {learning_rate:.3g}. Lower --num_warmup_steps for a short run."
    )
