"""Learning-rate schedules: linear warm-up, then cosine, linear or constant decay."""

from __future__ import annotations

import math


class WarmupDecay:
    """Multiplier of the base LR at a step (for `torch.optim.lr_scheduler.LambdaLR`).

    A plain object rather than a closure so that the scheduler's state_dict stays picklable.
    """

    def __init__(self, total_steps: int, warmup_steps: int = 0, kind: str = "cosine",
                 min_ratio: float = 0.0) -> None:
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.kind, self.min_ratio = kind, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        t = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.0)
        decay = 0.5 * (1 + math.cos(math.pi * t)) if self.kind == "cosine" else 1 - t
        return self.min_ratio + (1 - self.min_ratio) * decay
