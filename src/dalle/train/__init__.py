"""Training: one loop for every stage (AdamW, schedules, EMA, AMP, DDP/FSDP, exact resume), each
stage's typed run config, and the function that trains it."""

from dalle.train.clip import train_clip
from dalle.train.loop import Trainer
from dalle.train.prior import train_prior
from dalle.train.runs import CLIPRun, PriorRun, RunConfig, VAERun
from dalle.train.vae import train_vae

__all__ = ["CLIPRun", "VAERun", "PriorRun", "RunConfig", "Trainer", "train_clip", "train_prior",
           "train_vae"]
