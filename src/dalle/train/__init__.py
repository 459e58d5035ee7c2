"""One training loop for every stage: AdamW, schedules, EMA, AMP, DDP, exact-resume checkpoints."""

from dalle.train.loop import Trainer

__all__ = ["Trainer"]
