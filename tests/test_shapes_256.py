"""The 256-px `shapes` (docs/shapes.md with every length times 4) and `dalle recipe shapes-256`,
the paper's geometry: an f = 8 dVAE, a 32x32 grid, rows of 33 tokens, the 11x11 conv layer."""

import inspect
import json

import numpy as np
import pytest
from PIL import Image

from dalle.config import CLIPConfig, PriorConfig
from dalle.data.shapes import PALETTE, generate_scenes, render, write_shapes
from dalle.errors import DalleError
from dalle.pipeline import DallePipeline
from dalle.recipe import build_recipe
from test_cli import dalle


def blocks_of_4(image):
    """The 64-px picture a 256-px one scales: each 4x4 block's majority colour (black on a tie)."""
    pixels = np.asarray(image).reshape(64, 4, 64, 4, 3).transpose(0, 2, 1, 3, 4).reshape(64, 64, 16, 3)
    lit = pixels.any(-1)
    out = np.zeros((64, 64, 3), dtype=np.uint8)
    keep = lit.sum(-1) > 8
    out[keep] = pixels[keep].max(1)  # one object's colour fills a block: no blend between two
    return out


def test_a_256_px_scene_is_the_64_px_scene_with_every_length_times_4():
    scenes = list(generate_scenes("test-zero-shot", 100, seed=3))
    agree = total = 0
    for scene in scenes:
        small, big = np.asarray(render(scene)), np.asarray(render(scene, 256))
        assert big.shape == (256, 256, 3)
        covered = np.zeros((256, 256), dtype=bool)
        for obj in scene.objects:
            x0, y0, x1, y1 = (4 * v for v in obj.bbox)
            box = big[y0:y1, x0:x1]
            covered[y0:y1, x0:x1] = True
            lit = box.any(-1)
            # The shape fills its scaled box exactly (every edge row and column is lit), in its colour.
            assert lit[0].any() and lit[-1].any() and lit[:, 0].any() and lit[:, -1].any()
            assert {tuple(c) for c in box[lit]} == {PALETTE[obj.color]}
        assert not big[~covered].any()  # nothing outside the scaled boxes
        down = blocks_of_4(big)
        if all(obj.shape != "triangle" for obj in scene.objects):
            # A circle, square or cross drawn at 4x its side covers, block for block, the pixels of
            # the 64-px one. A triangle's 64-px rows are filled to the row's lower edge
            # (shape_template), so they are up to one pixel wider per row than 4x4 blocks say.
            assert (down == small).all()
        agree += int((down.any(-1) & small.any(-1)).sum())
        total += int((down.any(-1) | small.any(-1)).sum())
    assert agree / total > 0.97


def test_256_px_data_have_the_64_px_captions(tmp_path):
    counts = {"train": 6, "test-zero-shot": 4}
    write_shapes(tmp_path / "64", counts, seed=1)
    write_shapes(tmp_path / "256", counts, seed=1, image_size=256)
    for split in counts:
        captions = [sorted((tmp_path / size / split).glob("*.txt")) for size in ("64", "256")]
        assert [f.read_text() for f in captions[0]] == [f.read_text() for f in captions[1]]
    assert Image.open(tmp_path / "256" / "train" / "000000.png").size == (256, 256)


def test_gpu_recipe_has_the_papers_geometry_and_the_base_presets(tmp_path):
    recipe = build_recipe("shapes-256", tmp_path, "gpu")
    steps = {s.name: s for s in recipe.steps}
    assert steps["data"].args["image_size"] == 256
    assert steps["tokenizer"].args["text_length"] == 256  # the prior's and CLIP's text length follow it
    vae = steps["train-vae"].args["run"].model
    assert (vae.image_size, vae.downsample, vae.grid_size, vae.codebook_size) == (256, 8, 32, 8192)
    assert (vae.hidden, vae.likelihood) == (128, "gaussian")  # VAEConfig.base, shapes' likelihood
    prior = steps["train-prior"].args["run"]
    base = PriorConfig.base()
    assert (prior.model.dim, prior.model.depth, prior.model.heads, prior.model.head_dim) == (
        base.dim, base.depth, base.heads, base.head_dim) == (1024, 24, 16, 64)
    # Row layers see the previous W = 32 image tokens and themselves (the grid side the codes
    # give the prior); the last layer is the 11x11 causal convolution.
    assert (prior.model.layout, prior.model.row_window, prior.model.conv_kernel) == ("sparse", None, 11)
    assert prior.train.bf16 and prior.train.activation_checkpointing and prior.vae
    clip = steps["train-clip"].args["run"].model
    assert clip == CLIPConfig.base()  # 256 px, patches of 16
    assert steps["eval"].args["data"] == tmp_path / "data"
    for budget in ("gpu", "quick"):  # a renamed parameter breaks the recipe here, not an hour in
        for step in build_recipe("shapes-256", tmp_path, budget).steps:
            inspect.signature(step.function).bind(**step.args, **step.restart)
            json.dumps(step.describe(tmp_path))


def test_the_cpu_budget_is_refused(tmp_path):
    """A DalleError: one line from the command line (`dalle recipe shapes-256` without CUDA too)."""
    with pytest.raises(DalleError, match=r"months on a CPU: use --budget gpu \(an hour of one H100\) or --quick"):
        build_recipe("shapes-256", tmp_path, "cpu")


@pytest.mark.slow  # 40 to 60 s on one thread (the stages 38 s: eval 11, dVAE 10, prior 9)
def test_quick_recipe_draws_256_px_pictures_from_a_32x32_grid(tmp_path):
    run = tmp_path / "run"
    r = dalle("recipe", "shapes-256", "--quick", "--out", run)
    assert r.returncode == 0, r.stderr
    pipe = DallePipeline.from_pretrained(run / "pipeline")
    assert (pipe.vae.config.image_size, pipe.vae.config.grid_size) == (256, 32)
    assert (pipe.prior.config.grid_size, pipe.prior.config.text_length) == (32, 256)
    assert (pipe.prior.config.row_window, pipe.prior.config.conv_kernel) == (None, 11)
    assert pipe.clip is not None and pipe.clip.config.image_size == 256
    assert pipe("a small red circle", images=1, candidates=2).images.shape == (1, 3, 256, 256)
    card = (run / "pipeline" / "README.md").read_text()
    assert "dalle recipe shapes-256 --quick --recipe-version 1" in card
    assert "| test-zero-shot | first |" in card
