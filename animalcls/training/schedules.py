"""Learning-rate schedules shared by the Keras trainer (train.CosineWarmup) and the NumPy head
trainer (heads.head_fit), so both follow one formula. No TensorFlow."""

from __future__ import annotations

import math


def cosine_rate(peak: float, total_epochs: int, warmup_epochs: int, epoch: int) -> float:
    """The rate for `epoch` (0-based): linear warm-up over `warmup_epochs`, then cosine decay
    from `peak` to zero at `total_epochs`."""
    if epoch < warmup_epochs:
        return peak * (epoch + 1) / (warmup_epochs + 1)
    span = max(1, total_epochs - warmup_epochs)
    return 0.5 * peak * (1 + math.cos(math.pi * min(1.0, (epoch - warmup_epochs) / span)))
