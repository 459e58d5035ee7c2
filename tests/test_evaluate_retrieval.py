import math

import pytest
import torch
import torch.nn.functional as F

from dalle.evaluate.retrieval import clip_score, picture_retrieval, r_precision

E = 12  # embedding size of the fake scorer; captions are ids 0..E-1


class OneHotScorer:
    """Images (N, 3, 2, 2) embed as their flattened pixels, caption c as the c-th unit vector."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)

    def encode_text(self, text_ids: torch.Tensor) -> torch.Tensor:
        return F.one_hot(text_ids[:, 0], E).float()


def captions(*ids: int) -> torch.Tensor:
    """Token ids (N, 4): the caption's id followed by pads."""
    return torch.tensor([[i, 0, 0, 0] for i in ids])


def images(*vectors: torch.Tensor) -> torch.Tensor:
    return torch.stack(vectors).view(-1, 3, 2, 2)


def unit(i: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(i), E).float()


def test_clip_score_is_100_times_the_clamped_cosine():
    model = OneHotScorer()
    assert clip_score(model, images(5 * unit(3)), captions(3)) == pytest.approx(100)
    assert clip_score(model, images(unit(3) + unit(4)), captions(3)) == pytest.approx(100 / math.sqrt(2))
    assert clip_score(model, images(-unit(3)), captions(3)) == 0
    three = images(unit(1), unit(2), unit(7))
    assert clip_score(model, three, captions(1, 2, 5), batch_size=2) == pytest.approx(200 / 3)


def test_clip_score_checks_the_pairs():
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        clip_score(OneHotScorer(), images(unit(0), unit(1)), captions(0))


def test_r_precision_with_every_other_caption_as_distractor_is_exact():
    model = OneHotScorer()
    ids = list(range(E))
    own = [unit(i) for i in ids[:6]]
    wrong = [unit((i + 1) % E) + 0.5 * unit(i) for i in ids[6:]]  # prefers the next caption
    assert r_precision(model, images(*own, *wrong), captions(*ids), r=E) == 0.5
    assert r_precision(model, images(*own), captions(*ids[:6]), r=6) == 1.0


def test_ties_count_against_the_image():
    assert r_precision(OneHotScorer(), images(torch.ones(E), torch.ones(E)), captions(0, 1), r=2) == 0.0


def test_identical_captions_are_never_distractors():
    # Fashion-MNIST style: many images share one of few captions.
    labels = [0, 1, 2] * 20
    assert r_precision(OneHotScorer(), images(*[unit(c) for c in labels]), captions(*labels), r=3) == 1.0
    with pytest.raises(ValueError, match="only 2"):
        r_precision(OneHotScorer(), images(*[unit(c) for c in labels]), captions(*labels), r=4)


def test_distractors_are_drawn_uniformly_and_seeded():
    # Each image prefers caption d = its own + 1 over its own, so it is retrieved exactly when d is
    # not among the r - 1 distractors drawn from the E - 1 other captions: p = 1 - (r - 1) / (E - 1).
    n, r = 3000, 4
    own = torch.arange(n) % E
    vectors = [unit((c + 1) % E) + 0.5 * unit(c) for c in own.tolist()]
    score = r_precision(OneHotScorer(), images(*vectors), captions(*own.tolist()), r=r, seed=1)
    p = 1 - (r - 1) / (E - 1)
    assert abs(score - p) < 4 * math.sqrt(p * (1 - p) / n)
    again = r_precision(OneHotScorer(), images(*vectors), captions(*own.tolist()), r=r, seed=1)
    assert again == score


def test_a_separate_distractor_pool_without_the_true_captions():
    model = OneHotScorer()
    pool = captions(*range(4, E), 4, 5)
    assert r_precision(model, images(unit(0), unit(1)), captions(0, 1), r=9, distractor_text_ids=pool) == 1.0
    with pytest.raises(ValueError, match="needs 9 distinct other captions as distractors but .* only 8"):
        r_precision(model, images(unit(0)), captions(0), r=10, distractor_text_ids=pool)
    with pytest.raises(ValueError, match="distractor_text_ids must be"):
        r_precision(model, images(unit(0)), captions(0), r=2, distractor_text_ids=torch.zeros(3, 5).long())


def test_picture_retrieval_counts_generated_images_nearest_their_own_real_picture():
    model = OneHotScorer()
    real = images(unit(0), unit(1), unit(2), unit(3))
    names = ["star", "moon", "sun", "moon"]
    # Image 0 is nearest real 0 (right); 1 nearest real 3, the other moon (right); 2 nearest real 1
    # (a moon, wrong); 3 half-way between reals 2 and 3 resolves to the first of the tie, 2 (wrong).
    generated = images(unit(0) + 0.1 * unit(1), unit(3), unit(1), unit(2) + unit(3))
    assert picture_retrieval(model, generated, real, names) == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="must pair up"):
        picture_retrieval(model, generated[:3], real, names)
