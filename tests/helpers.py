"""Small datasets and runs shared by the tests."""

import torch
from torch.utils.data import Dataset

from dalle.config import DVAEConfig, TrainConfig
from dalle.dvae import DiscreteVAE
from dalle.train import Trainer
from dalle.train.vae import DVAELoss


class RandomImages(Dataset):
    """n fixed random 16x16 images with captions, deterministic by seed."""

    def __init__(self, n: int = 24, size: int = 16, seed: int = 0, flat: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        shape = (n, 3, 1, 1) if flat else (n, 3, size, size)
        self.images = torch.rand(*shape, generator=g).expand(n, 3, size, size).contiguous()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "caption": f"image {i}", "index": i}


def tiny_train_config(**kwargs) -> TrainConfig:
    defaults = dict(steps=8, batch_size=8, lr=3e-3, warmup_steps=2, ema_decay=0.9, grad_clip=1.0,
                    device="cpu", log_every=2, sample_every=0, checkpoint_every=4)
    return TrainConfig(**{**defaults, **kwargs})


def make_trainer(out_dir, config: TrainConfig, resume: bool = False, dataset=None) -> Trainer:
    torch.manual_seed(config.seed)
    model = DiscreteVAE(DVAEConfig.tiny())
    return Trainer(model, dataset or RandomImages(), config, out_dir, DVAELoss(config.seed),
                   resume=resume, show_progress=False)
