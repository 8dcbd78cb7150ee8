"""Learning-rate schedules as multipliers of the peak rate, for ``torch.optim.lr_scheduler.LambdaLR``.

Written here rather than taken from ``transformers.get_scheduler`` because the built-in cosine and
linear schedules decay to 0 and ignore ``min_lr_ratio``; one small function gives all four
schedules the same warmup and the same floor.
"""

from __future__ import annotations

import math
from collections.abc import Callable

#: Fraction of the steps over which `wsd` decays (warmup, stable, then decay over the last 20%).
WSD_DECAY_FRACTION = 0.2


def warmup_steps(total_steps: int, warmup_fraction: float) -> int:
    """Number of linear-warmup steps (at least 1 when the fraction is positive)."""
    if warmup_fraction <= 0:
        return 0
    return max(1, min(total_steps, math.ceil(total_steps * warmup_fraction)))


def lr_multiplier(schedule: str, total_steps: int, warmup_fraction: float, min_lr_ratio: float) -> Callable[[int], float]:
    """``f(step) -> lr / peak_lr``: linear warmup, then the schedule down to ``min_lr_ratio``.

    ``step`` counts optimizer steps from 0 (LambdaLR's convention); the last step is
    ``total_steps - 1``, where decaying schedules reach ``min_lr_ratio`` exactly.
    """
    if schedule not in ("cosine", "linear", "constant", "wsd"):
        raise ValueError(f"unknown schedule {schedule!r}")
    warm = warmup_steps(total_steps, warmup_fraction)
    last = max(total_steps - 1, 1)
    decay_start = max(warm, int(round(total_steps * (1 - WSD_DECAY_FRACTION))))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if schedule == "constant":
            return 1.0
        if schedule == "wsd":
            if step < decay_start:
                return 1.0
            progress = (step - decay_start) / max(last - decay_start, 1)
        else:
            progress = (step - warm) / max(last - warm, 1)
        progress = min(max(progress, 0.0), 1.0)
        if schedule == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:  # linear, and the linear decay phase of wsd
            shape = 1.0 - progress
        return min_lr_ratio + (1.0 - min_lr_ratio) * shape

    return f
