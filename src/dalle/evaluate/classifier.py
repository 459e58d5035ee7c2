"""Label accuracy of generated Fashion-MNIST images (docs/design.md, "Evaluation"): a small CNN trained
on the real training split judges whether an image generated for "a sneaker" shows a sneaker. The
same CNN in colour judges the art style of generated emoji (`dalle.evaluate.emoji`).

Images go in as generated, (N, 3 or 1, H, W) floats in [0, 1]: a one-channel classifier turns them
to grayscale (ITU-R 601 luma, as PIL's "L" mode), and it resizes them to its `image_size` itself.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dalle.config import JSONConfig
from dalle.data.fashion_mnist import CLASSES, DEFAULT_ROOT, load_fashion_mnist
from dalle.errors import DalleError
from dalle.pretrained import PretrainedModel
from dalle.utils import check_unit_images

LUMA = (0.299, 0.587, 0.114)


@dataclasses.dataclass(frozen=True)
class ClassifierConfig(JSONConfig):
    """Two conv blocks (width, 2 * width channels), each halving the image, then an MLP head."""

    n_classes: int = len(CLASSES)
    image_size: int = 28
    channels: int = 1  # 1: grayscale (Fashion-MNIST), 3: colour
    width: int = 32
    hidden: int = 128
    dropout: float = 0.25

    def __post_init__(self) -> None:
        if self.n_classes < 2:
            raise DalleError(f"n_classes must be at least 2, got {self.n_classes}")
        if self.image_size < 4 or self.image_size % 4:
            raise DalleError(f"image_size must be a positive multiple of 4, got {self.image_size}")
        if self.channels not in (1, 3):
            raise DalleError(f"channels must be 1 (grayscale) or 3 (colour), got {self.channels}")
        if self.width < 1 or self.hidden < 1 or not 0 <= self.dropout < 1:
            raise DalleError("width and hidden must be positive and dropout in [0, 1)")


def to_grayscale(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images (N, 3 or 1, H, W) in [0, 1] -> (N, 1, size, size), resized bilinearly (antialiased)."""
    check_unit_images(images)
    if images.shape[1] == 3:
        images = torch.einsum("nchw,c->nhw", images, images.new_tensor(LUMA))[:, None]
    return _resized(images, size)


def classifier_input(images: torch.Tensor, config: ClassifierConfig) -> torch.Tensor:
    """Images (N, 3 or 1, H, W) in [0, 1] as the classifier of `config` reads them: grayscale or
    colour, at its size."""
    if config.channels == 1:
        return to_grayscale(images, config.image_size)
    check_unit_images(images)
    if images.shape[1] != 3:
        raise DalleError(f"a colour classifier needs RGB images, got {images.shape[1]} channel(s)")
    return _resized(images, config.image_size)


def _resized(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images (N, C, H, W) at size x size, resized bilinearly (antialiased) if they are not."""
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=True)
    return images


def _conv_block(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(n_in, n_out, 3, padding=1, bias=False), nn.BatchNorm2d(n_out),
                         nn.ReLU(), nn.MaxPool2d(2))


class LabelClassifier(PretrainedModel):
    """A small CNN mapping images (N, 3 or 1, H, W) in [0, 1] to class logits (N, n_classes)."""

    config_class = ClassifierConfig
    config: ClassifierConfig

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        w, side = config.width, config.image_size // 4
        self.features = nn.Sequential(_conv_block(config.channels, w), _conv_block(w, 2 * w))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(config.dropout),
                                  nn.Linear(2 * w * side * side, config.hidden), nn.ReLU(),
                                  nn.Dropout(config.dropout), nn.Linear(config.hidden, config.n_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = classifier_input(images.to(next(self.head[-1].parameters())), self.config)
        return self.head(self.features(x))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Class indices (N,) on the CPU, `batch_size` images at a time."""
        return torch.cat([self(batch).argmax(-1).cpu() for batch in images.split(batch_size)])


def _labels(labels: torch.Tensor, n: int, n_classes: int) -> torch.Tensor:
    labels = torch.as_tensor(labels).long().cpu()
    if labels.shape != (n,):
        raise DalleError(f"labels must be ({n},) to match the images, got shape {tuple(labels.shape)}")
    if n and (labels.min() < 0 or labels.max() >= n_classes):
        raise DalleError(f"labels must be class indices in [0, {n_classes}), "
                         f"got {labels.min()}..{labels.max()}")
    return labels


def train_classifier(images: torch.Tensor, labels: torch.Tensor, config: ClassifierConfig | None = None,
                     epochs: int = 4, batch_size: int = 128, lr: float = 3e-3, seed: int = 0,
                     device: str | torch.device = "cpu") -> LabelClassifier:
    """Train a LabelClassifier on images (N, 3 or 1, H, W) in [0, 1] and labels (N,); eval mode.

    AdamW (weight decay 1e-4) with a cosine-decayed learning rate over `epochs` shuffled passes.
    Initialisation, shuffling and dropout are seeded without touching the global RNG.
    """
    config = config or ClassifierConfig()
    labels = _labels(labels, len(images), config.n_classes)
    if len(images) < 2:
        raise DalleError(f"need at least 2 training images, got {len(images)}")
    inputs = classifier_input(images.cpu(), config).float()
    steps = epochs * math.ceil(len(inputs) / batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LabelClassifier(config).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        for _ in range(epochs):
            for index in torch.randperm(len(inputs)).split(batch_size):
                loss = F.cross_entropy(model(inputs[index].to(device)), labels[index].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    return model.eval()


def label_accuracy(classifier: LabelClassifier, images: torch.Tensor, labels: torch.Tensor,
                   batch_size: int = 256) -> float:
    """Fraction of images (N, 3 or 1, H, W) in [0, 1] classified as their labels (N,).

    Puts the classifier in eval mode.
    """
    labels = _labels(labels, len(images), classifier.config.n_classes)
    if not len(labels):
        raise DalleError("no images to classify")
    classifier.eval()
    return float((classifier.predict(images, batch_size) == labels).float().mean())


def fashion_mnist_tensors(split: str,
                          root: str | Path = DEFAULT_ROOT) -> tuple[torch.Tensor, torch.Tensor]:
    """A Fashion-MNIST split as images (N, 1, 28, 28) float in [0, 1] and labels (N,)."""
    images, labels = load_fashion_mnist(split, root)
    return torch.from_numpy(images / 255).float()[:, None], torch.from_numpy(labels.astype("int64"))


def train_fashion_mnist_classifier(out: str | Path, root: str | Path = DEFAULT_ROOT,
                                   image_size: int = 28, epochs: int = 4,
                                   device: str = "auto") -> float:
    """Train the classifier `dalle eval images --classifier` uses on Fashion-MNIST's training
    split, save it to `out`, and return its accuracy on the test split."""
    from dalle.utils import resolve_device

    images, labels = fashion_mnist_tensors("train", root)
    target = resolve_device(device)
    model = train_classifier(images, labels, ClassifierConfig(image_size=image_size), epochs=epochs,
                             device=str(target))
    test_images, test_labels = fashion_mnist_tensors("test", root)
    accuracy = label_accuracy(model, test_images.to(target), test_labels.to(target))
    model.save_pretrained(out)
    return accuracy
