"""dalle: a faithful, fast implementation of OpenAI's DALL-E (Ramesh et al. 2021) in PyTorch."""

from dalle.clip import CLIP
from dalle.config import CLIPConfig, DVAEConfig, PriorConfig, TokenizerConfig, TrainConfig
from dalle.dvae import DiscreteVAE
from dalle.pipeline import DallePipeline
from dalle.prior import Prior
from dalle.sampling import sample_codes
from dalle.text import TextTokenizer
from dalle.train import Trainer

__all__ = ["CLIP", "CLIPConfig", "DVAEConfig", "DallePipeline", "DiscreteVAE", "Prior",
           "PriorConfig", "TextTokenizer", "TokenizerConfig", "TrainConfig", "Trainer",
           "sample_codes"]
__version__ = "0.1.0"
