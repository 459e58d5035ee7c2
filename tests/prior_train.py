"""Trains the tiny prior a few steps; run alone or under torchrun (used by test_train_prior.py).

usage: prior_train.py DATA_DIR OUT_DIR [--fsdp] [--activation-checkpointing]
"""

import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from dalle.train.prior import train_prior  # noqa: E402
from dalle.train.runs import PriorRun  # noqa: E402
from helpers import tiny_prior_config, tiny_train_config  # noqa: E402

torch.set_num_threads(1)
data, out, flags = sys.argv[1], sys.argv[2], sys.argv[3:]
config = tiny_train_config(steps=4, ema_decay=0.9, export="raw", betas=(0.9, 0.96),
                           weight_decay=4.5e-2, grad_clip=4.0, fsdp="--fsdp" in flags,
                           activation_checkpointing="--activation-checkpointing" in flags)
train_prior(PriorRun(f"{data}/codes", out, tokenizer=f"{data}/tokenizer",
                     model=tiny_prior_config(data), train=config, caption_drop=0.3),
            show_progress=False)
