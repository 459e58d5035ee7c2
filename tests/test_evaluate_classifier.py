import json

import pytest
import torch

from dalle.evaluate.classifier import (
    ClassifierConfig,
    LabelClassifier,
    label_accuracy,
    to_grayscale,
    train_classifier,
)

TINY = ClassifierConfig(n_classes=2, image_size=8, width=4, hidden=8, dropout=0.0)


def stripes(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy RGB 16x16 images: class 0 has horizontal stripes, class 1 vertical ones."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    pattern = (torch.arange(16) // 2 % 2).float()
    horizontal, vertical = pattern[:, None].expand(16, 16), pattern[None, :].expand(16, 16)
    images = torch.where(labels[:, None, None] == 0, horizontal, vertical)[:, None].expand(-1, 3, -1, -1)
    noise = 0.3 * torch.rand(n, 3, 16, 16, generator=g)
    return (0.7 * images + noise).clamp(0, 1), labels


def test_learns_two_patterns_and_generalises():
    images, labels = stripes(64)
    model = train_classifier(images, labels, TINY, epochs=6, batch_size=16, lr=1e-2)
    test_images, test_labels = stripes(32, seed=1)
    assert not model.training
    assert label_accuracy(model, test_images, test_labels) == 1.0
    assert label_accuracy(model, test_images, 1 - test_labels) == 0.0


def test_accuracy_counts_matches():
    class Fixed(LabelClassifier):
        def forward(self, images):  # predicts class 1 exactly for images whose mean is above 0.5
            p1 = (images.mean((1, 2, 3)) > 0.5).float()
            return torch.stack([1 - p1, p1], -1)

    model = Fixed(TINY)
    images = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0]).view(5, 1, 1, 1).expand(-1, 3, 4, 4)
    assert label_accuracy(model, images, torch.tensor([0, 1, 0, 0, 0]), batch_size=2) == pytest.approx(3 / 5)


def test_training_is_seeded_and_leaves_the_global_rng_alone():
    images, labels = stripes(16)
    state = torch.random.get_rng_state()
    a = train_classifier(images, labels, TINY, epochs=1, batch_size=4, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = train_classifier(images, labels, TINY, epochs=1, batch_size=4, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_save_and_load_round_trip(tmp_path):
    images, labels = stripes(16)
    model = train_classifier(images, labels, TINY, epochs=1, batch_size=8)
    model.save_pretrained(tmp_path / "classifier")
    assert json.loads((tmp_path / "classifier" / "config.json").read_text())["image_size"] == 8
    loaded = LabelClassifier.from_pretrained(tmp_path / "classifier").eval()
    assert loaded.config == TINY
    assert torch.equal(loaded.predict(images), model.predict(images))


def test_grayscale_uses_luma_and_resizes():
    rgb = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    gray = to_grayscale(rgb, 2)
    assert gray.shape == (1, 1, 2, 2) and torch.allclose(gray, torch.full_like(gray, 0.299))
    assert torch.equal(to_grayscale(rgb[:, :1], 4), rgb[:, :1])


def test_clear_errors_for_bad_inputs():
    model = LabelClassifier(TINY)
    with pytest.raises(ValueError, match=r"labels must be \(3,\)"):
        label_accuracy(model, torch.zeros(3, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="class indices"):
        label_accuracy(model, torch.zeros(1, 3, 8, 8), torch.tensor([2]))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        label_accuracy(model, torch.full((1, 3, 8, 8), 255.0), torch.tensor([0]))
    with pytest.raises(ValueError, match="multiple of 4"):
        ClassifierConfig(image_size=30)
