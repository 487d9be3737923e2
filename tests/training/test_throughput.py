"""paca_hf.training.throughput.DataWaitMeter against hand-computed times (a fake clock)."""

import pytest

from paca_hf.training.throughput import DataWaitMeter


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_data_wait_fraction_skips_the_first_step_and_sums_accumulated_batches():
    clock = FakeClock()
    meter = DataWaitMeter(skip_steps=1, clock=clock)
    # step 1 (skipped): 5 s waiting for the first batch, 1 s of model
    with meter.waiting():
        clock.now += 5.0
    clock.now += 1.0
    meter.step_done()
    clock.now += 100.0  # evaluation between steps: outside any step
    # steps 2 and 3: two accumulated batches each, 0.25 s + 0.25 s waiting and 1.5 s of model in all
    for _ in range(2):
        for _ in range(2):
            with meter.waiting():
                clock.now += 0.25
            clock.now += 0.75
        meter.step_done()
    summary = meter.summary()
    assert summary["measured_steps"] == 2
    assert summary["data_wait_s_per_step"] == pytest.approx(0.5)
    assert summary["step_s_per_step"] == pytest.approx(2.0)
    assert summary["data_wait_fraction"] == pytest.approx(0.25)
    assert "25.0% of step time" in meter.describe(num_workers=2)


def test_nothing_measured_and_misuse():
    meter = DataWaitMeter(skip_steps=1, clock=FakeClock())
    assert meter.summary()["data_wait_fraction"] is None
    assert "not measured" in meter.describe(0)
    with pytest.raises(RuntimeError, match="without a waiting"):
        meter.step_done()
