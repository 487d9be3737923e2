"""Whether the data path keeps up with the model: the share of each training step spent waiting for its batches."""

import time
from contextlib import contextmanager


class DataWaitMeter:
    """Wall-clock time a training loop spends getting its batches (the loader's `next` plus the augmentation that
    follows it) against the time of whole optimiser steps.

        meter = DataWaitMeter()
        while training:
            with meter.waiting():                 # once per batch (several per step with gradient accumulation)
                batch = next(stream)
                images, labels = augment(...)
            ...forward, backward, optimiser...
            meter.step_done()                     # a step runs from its first `waiting()` to here

    The first `skip_steps` steps are left out of the summary: they include the loader workers' start-up and the
    first allocations. Evaluation and checkpointing between steps are outside any step. On a GPU the augmentation's
    kernels run asynchronously, so the wait counts the host's time to launch them; the step's end must be
    synchronised (the loss's `.item()` is) for the step time to be right.
    """

    def __init__(self, skip_steps: int = 1, clock=time.perf_counter):
        self.skip_steps = skip_steps
        self.clock = clock
        self.steps = 0
        self.wait_s = 0.0
        self.step_s = 0.0
        self._step_start = None
        self._step_wait = 0.0

    @contextmanager
    def waiting(self):
        start = self.clock()
        if self._step_start is None:
            self._step_start = start
        try:
            yield
        finally:
            self._step_wait += self.clock() - start

    def step_done(self) -> None:
        if self._step_start is None:
            raise RuntimeError("step_done() without a waiting() in this step")
        self.steps += 1
        if self.steps > self.skip_steps:
            self.wait_s += self._step_wait
            self.step_s += self.clock() - self._step_start
        self._step_start, self._step_wait = None, 0.0

    def summary(self) -> dict:
        """`data_wait_fraction` (of step time), `data_wait_s_per_step`, `step_s_per_step` and `measured_steps`
        (None instead of the times when no step past `skip_steps` was measured)."""
        measured = max(self.steps - self.skip_steps, 0)
        return {
            "measured_steps": measured,
            "data_wait_s_per_step": self.wait_s / measured if measured else None,
            "step_s_per_step": self.step_s / measured if measured else None,
            "data_wait_fraction": self.wait_s / self.step_s if measured and self.step_s > 0 else None,
        }

    def describe(self, num_workers: int) -> str:
        summary = self.summary()
        if not summary["measured_steps"]:
            return f"Data wait: not measured (needs more than {self.skip_steps} step(s))."
        return (
            f"Data wait: {100 * summary['data_wait_fraction']:.1f}% of step time "
            f"({summary['data_wait_s_per_step']:.3f} s of {summary['step_s_per_step']:.3f} s per step over "
            f"{summary['measured_steps']} steps after the first {self.skip_steps}; loader with {num_workers} "
            "worker(s) + augmentation in the training process)."
        )
