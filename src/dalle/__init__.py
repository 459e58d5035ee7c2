"""dalle: a faithful, fast implementation of OpenAI's DALL-E (Ramesh et al. 2021) in PyTorch."""

from dalle.config import DVAEConfig, TrainConfig
from dalle.dvae import DiscreteVAE
from dalle.train import Trainer

__all__ = ["DVAEConfig", "DiscreteVAE", "TrainConfig", "Trainer"]
__version__ = "0.1.0"
