"""Trains the tiny dVAE for a few steps; run alone or under torchrun (used by test_train.py)."""

import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from helpers import make_trainer, tiny_train_config  # noqa: E402

torch.set_num_threads(1)
trainer = make_trainer(sys.argv[1], tiny_train_config(steps=6, ema_decay=0.0, export="raw"))
trainer.fit()
trainer.close()
