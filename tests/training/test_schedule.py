import math

import pytest

from demix.training.schedule import lr_multiplier, warmup_steps


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd"])
def test_decaying_schedules_warm_up_to_peak_and_end_at_min_ratio(schedule):
    f = lr_multiplier(schedule, total_steps=100, warmup_fraction=0.1, min_lr_ratio=0.2)
    values = [f(s) for s in range(100)]
    assert values[0] == pytest.approx(0.1)  # first of 10 warmup steps
    assert values[9] == pytest.approx(1.0)
    assert max(values) == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.2)
    assert min(values[10:]) == pytest.approx(0.2)
    # never increases after warmup
    assert all(b <= a + 1e-12 for a, b in zip(values[9:], values[10:]))


def test_cosine_midpoint_and_linear_midpoint():
    cos = lr_multiplier("cosine", 101, 0.0, 0.0)
    lin = lr_multiplier("linear", 101, 0.0, 0.0)
    assert cos(50) == pytest.approx(0.5)
    assert lin(25) == pytest.approx(0.75)
    assert cos(25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_wsd_is_stable_until_the_last_fifth():
    f = lr_multiplier("wsd", 100, 0.05, 0.1)
    assert [f(s) for s in range(5, 80)] == [1.0] * 75
    assert f(81) < 1.0
    assert f(99) == pytest.approx(0.1)


def test_constant_ignores_min_ratio_after_warmup():
    f = lr_multiplier("constant", 50, 0.1, 0.1)
    assert f(0) == pytest.approx(0.2)
    assert [f(s) for s in range(5, 50)] == [1.0] * 45


def test_warmup_steps_rounding():
    assert warmup_steps(100, 0.0) == 0
    assert warmup_steps(10, 0.01) == 1
    assert warmup_steps(100, 0.05) == 5
