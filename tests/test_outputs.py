"""What `dalle generate` leaves on disk: a folder per run, PNGs that carry their facts,
generation.json, and a grid a person can see (dalle.outputs)."""

import json
from datetime import datetime

import numpy as np
import pytest
from PIL import Image

from dalle.outputs import (
    generation_record,
    grid_scale,
    new_output_folder,
    png_info,
    read_png_record,
    save_generation,
    slug,
)
from dalle.utils import captioned, image_grid
from test_pipeline import tiny_pipeline


@pytest.fixture(scope="module")
def pipeline():
    return tiny_pipeline()


def test_a_slug_keeps_the_prompts_words_and_is_capped():
    assert slug("A red circle, twitter style!") == "a-red-circle-twitter-style"
    assert slug("../../etc/passwd") == "etc-passwd"  # no path separators or dots survive
    assert slug("une pomme rouge, café") == "une-pomme-rouge-café"
    assert slug("🍎🍎") == "image"
    long = slug("a small green triangle above a large red circle on the left of the picture")
    assert len(long) <= 48 and long == "a-small-green-triangle-above-a-large-red-circle"
    assert slug("x" * 100) == "x" * 48


def test_each_run_gets_its_own_folder_even_in_the_same_second(tmp_path):
    now = datetime(2026, 12, 6, 14, 12, 5)
    folders = [new_output_folder(tmp_path / "outputs", "a red circle", now) for _ in range(3)]
    assert [f.name for f in folders] == ["2026-12-06_1412_a-red-circle", "2026-12-06_1412_a-red-circle-2",
                                         "2026-12-06_1412_a-red-circle-3"]
    assert all(f.is_dir() and not any(f.iterdir()) for f in folders)


def test_the_pngs_and_generation_json_say_how_they_were_made(pipeline, tmp_path):
    result = pipeline("a large red circle", images=2, candidates=5, top_k=7, seed=3)
    record = generation_record(result, "my-pipeline")
    paths = save_generation(result, tmp_path, record)
    assert [p.name for p in paths] == ["00.png", "01.png", "grid.png", "generation.json"]
    listed = json.loads((tmp_path / "generation.json").read_text())
    # The pipeline's defaults fill the settings the call left out.
    common = {"prompt": "a large red circle", "seed": 3, "temperature": 1.0, "top_k": 7, "top_p": None,
              "guidance_scale": 1.0, "candidates": 5, "pipeline": "my-pipeline"}
    assert {k: listed[k] for k in common} == common
    assert listed["dalle_version"] and listed["created"]
    assert [i["file"] for i in listed["images"]] == ["00.png", "01.png"]
    assert [i["candidate_index"] for i in listed["images"]] == result.indices.tolist()
    assert [i["clip_score"] for i in listed["images"]] == pytest.approx(result.scores.tolist())
    for path, facts, picture in zip(paths, listed["images"], result.pil()):
        with Image.open(path) as saved:
            back = read_png_record(saved)
            assert saved.text["Software"].startswith("dalle ")
            assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(picture))
        assert back == {**{k: v for k, v in listed.items() if k != "images"},
                        "candidate_index": facts["candidate_index"], "clip_score": facts["clip_score"]}


def test_a_prompt_outside_latin_1_round_trips_through_the_text_chunks(tmp_path):
    facts = {"prompt": "一个红色的圆 🍎", "seed": 1, "top_k": None, "clip_score": 0.25}
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png", pnginfo=png_info(facts))
    with Image.open(tmp_path / "a.png") as saved:
        assert read_png_record(saved) == facts
    facts = {"prompt": "42", "pipeline": "null"}  # text that reads as JSON stays text
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png", pnginfo=png_info(facts))
    with Image.open(tmp_path / "b.png") as saved:
        assert read_png_record(saved) == facts


def test_the_grid_is_enlarged_by_nearest_neighbour_under_its_prompt(pipeline, tmp_path):
    result = pipeline("a large red circle", images=3, candidates=3, seed=0)
    save_generation(result, tmp_path, generation_record(result, "p"))
    assert grid_scale(64) == 4 and grid_scale(16) == 16 and grid_scale(512) == 1
    plain = image_grid(result.images, columns=3, padding=4, scale=4)
    assert plain.size == (3 * (256 + 4) + 4, 256 + 8)
    with Image.open(tmp_path / "grid.png") as grid:
        grid = np.asarray(grid.convert("RGB"))
    band = grid.shape[0] - plain.height
    assert grid.shape[1] == plain.width and 20 <= band <= 40  # one line of caption above
    assert np.array_equal(grid[band:], np.asarray(plain))
    assert (grid[:band] < 128).any() and (grid[:band] == 255).mean() > 0.8  # dark text on white
    # Nearest neighbour: each 64-px image's pixel is a 4x4 block of the grid.
    first = np.asarray(result.pil()[0])
    tile = grid[band + 4 : band + 4 + 256, 4 : 4 + 256]
    assert np.array_equal(tile, first.repeat(4, 0).repeat(4, 1))


def test_a_long_caption_wraps_to_the_grids_width_and_training_captions_stay_one_line():
    row = Image.new("RGB", (200, 50), "gray")
    wrapped = captioned([row], ["a small green triangle above a large red circle, " * 3], font_size=20)
    assert wrapped.width == 200 and wrapped.height > 50 + 3 * 25
    one_line = captioned([row, row], ["short", "a much longer training caption that is wider"])
    assert one_line.height == 2 * (50 + 14) and one_line.width > 200


def test_the_generation_records_its_seed_and_settings(pipeline):
    result = pipeline(["a red circle", "a blue square"], images=1, candidates=2, temperature=0.5, seed=9)
    for r in result:
        assert r.seed == 9 and r.candidates == 2
        assert r.sampling == {"temperature": 0.5, "top_k": None, "top_p": None, "guidance_scale": 1.0}
