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


def warmup_warning(warmup_steps: int, total_steps: int, learning_rate: float, start_factor: float = 1e-6,
                   power: float = 1.0) -> str | None:
    """[`whole_run_warmup_warning`] for the fine-tune's [`PolyWithWarmup`] schedule and flags."""
    return whole_run_warmup_warning(
        warmup_steps, total_steps, learning_rate, PolyWithWarmup(warmup_steps, total_steps, start_factor, power),
        warmup=f"--num_warmup_steps {warmup_steps}", run=f"--max_train_steps {total_steps}",
        where="at the last step; times the groups' multipliers", advice="Lower --num_warmup_steps for a short run.",
    )
