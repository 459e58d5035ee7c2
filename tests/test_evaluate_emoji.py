"""`dalle eval emoji`: the rank of each (emoji, style) pair's true picture among its style's."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dalle.cli import app
from dalle.data.emoji import write_emoji
from dalle.errors import DalleError
from dalle.evaluate.emoji import evaluate_emoji, markdown_table, ranks
from dalle.pipeline import DallePipeline
from test_data_emoji import make_source


def test_ranks_count_ties_against_the_true_picture():
    pictures = torch.zeros(4, 3, 16, 16)
    pictures[1] += 0.5
    pictures[2] += 1.0
    pictures[3] += 0.5  # the same as picture 1
    assert ranks(pictures[[2, 0]], pictures, [2, 0]) == [1, 1]
    assert ranks(pictures[[1]], pictures, [1]) == [2]  # picture 3 is as near
    assert ranks(pictures[[0]], pictures, [2]) == [4]


@pytest.fixture(scope="module")
def emoji_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("emoji")
    write_emoji(root / "data", ["google", "twitter"], source=make_source(root / "src"))
    return root / "data"


def test_held_out_and_seen_pairs_with_ceiling_and_reference(emoji_folder, tmp_path):
    pipe = DallePipeline.from_pretrained("emoji")
    results = evaluate_emoji(pipe, emoji_folder, tmp_path / "out", pairs=2, candidates=2)
    # Held out: one plain emoji per style (the skin-tone variants are left out); seen: two each.
    assert results["held-out"]["pairs"] == 2 and results["seen"]["pairs"] == 4
    for metrics in results.values():
        for name in ("drawn", "ceiling", "reference"):
            assert 0 <= metrics[f"{name}_top1"] <= metrics[f"{name}_top5"] <= 1
            assert 1 <= metrics[f"{name}_median_rank"] <= 7  # pictures per style, both splits
        assert 0 <= metrics["style_accuracy"] <= 1 and 0 <= metrics["style_accuracy_real"] <= 1
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == results
    # a row per style: its true pictures above its drawings, under a caption band
    for split, pairs_per_style in (("held-out", 1), ("seen", 2)):
        with Image.open(tmp_path / "out" / f"{split}.png") as picture:
            assert picture.width >= 2 + pairs_per_style * (64 + 2)  # a long caption widens it
            assert picture.height == 2 * (14 + 2 + 2 * (64 + 2))
    assert "| held-out (2) | drawn |" in markdown_table(results)
    assert "| held-out (2) | the true pictures |" in markdown_table(results)
    again = evaluate_emoji(pipe, emoji_folder, None, pairs=2, candidates=2)
    assert again == results


def test_the_command_prints_the_table_and_refuses_a_folder_without_emoji(emoji_folder, tmp_path):
    run = CliRunner().invoke(app, ["eval", "emoji", "--pipeline", "emoji", "--data", str(emoji_folder),
                                   "--pairs", "1", "--candidates", "1", "--styles", "twitter",
                                   "--out", str(tmp_path / "out")])
    assert run.exit_code == 0, run.output
    assert "| held-out (1) | ceiling |" in run.output and "results.json" in run.output
    pipe = DallePipeline.from_pretrained("emoji")
    for kwargs, message in (({"styles": ["fluent-3d"]}, "no emoji pictures of fluent-3d"),
                            ({"styles": ["noto"]}, "unknown emoji style noto; choose from google"),
                            ({"pairs": 0}, "pairs must be at least 1")):
        with pytest.raises(DalleError, match=message):
            evaluate_emoji(pipe, emoji_folder, tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()


def test_the_style_classifier_tells_the_styles_apart(tmp_path):
    """Two styles told apart by colour: the judge reads pictures it never saw right."""
    from PIL import Image

    from dalle.evaluate.emoji import _pictures, style_classifier

    rng = np.random.default_rng(0)
    pictures = {}
    for style, channel in (("google", 0), ("twitter", 2)):
        paths = []
        for i in range(40):
            pixels = rng.integers(0, 90, (64, 64, 3), dtype=np.uint8)
            pixels[16:48, 16:48, channel] = 230
            Image.fromarray(pixels).save(tmp_path / f"{i}-{style}.png")
            paths.append(tmp_path / f"{i}-{style}.png")
        pictures[style] = _pictures(paths, 64)
    judge = style_classifier({style: images[:30] for style, images in pictures.items()})
    unseen = torch.cat([images[30:] for images in pictures.values()])
    assert judge.predict(unseen).tolist() == [0] * 10 + [1] * 10
