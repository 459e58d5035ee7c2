"""dalle: a faithful, fast implementation of OpenAI's DALL-E (Ramesh et al. 2021) in PyTorch."""

from dalle.clip import CLIP
from dalle.config import CLIPConfig, PriorConfig, TokenizerConfig, TrainConfig, VAEConfig
from dalle.pipeline import DallePipeline
from dalle.prior import Prior
from dalle.sampling import sample_codes
from dalle.text import TextTokenizer
from dalle.train import Trainer
from dalle.vae import DiscreteVAE

__all__ = ["CLIP", "CLIPConfig", "VAEConfig", "DallePipeline", "DiscreteVAE", "Prior",
           "PriorConfig", "TextTokenizer", "TokenizerConfig", "TrainConfig", "Trainer",
           "sample_codes"]
__version__ = "0.1.0"
