"""The pipelines that ship inside the package: present, small, documented, and generating."""

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from dalle.card import example_prompts
from dalle.config import TrainConfig
from dalle.pipeline import BUNDLED_DIR, DallePipeline, bundled_pipelines, resolve_pipeline
from dalle.recipe import RECIPE_FILE, build_recipe
from test_cli import dalle


def test_shapes_and_emoji_ship_within_40_mb_in_bf16():
    assert bundled_pipelines() == ["emoji", "shapes"]
    files = [p for p in BUNDLED_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 40 * 2**20
    for weights in BUNDLED_DIR.rglob("model.safetensors"):
        with safe_open(str(weights), "pt") as f:
            assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"BF16"}, weights


def test_model_cards_state_data_licences_and_metrics():
    for name in bundled_pipelines():
        card = (BUNDLED_DIR / name / "README.md").read_text()
        for needed in ("## Data", "## Parts", "## Metrics", f"dalle recipe {name}"):
            assert needed in card, (name, needed)
    emoji = BUNDLED_DIR / "emoji"
    assert "CC-BY-4.0" in (emoji / "README.md").read_text()
    assert (emoji / "ATTRIBUTION.md").exists() and (emoji / "licenses").is_dir()


@pytest.mark.parametrize("name", ["shapes", "emoji"])
def test_bundled_pipelines_record_the_recipe_version_that_trained_them(name):
    """Each card names its recipe version, and recipe.json holds exactly what that version of
    the recipe runs (not today's recipe): an improved recipe lands as a new version before the
    hours of retraining, and this test keeps checking the shipped models against theirs."""
    card = (BUNDLED_DIR / name / "README.md").read_text()
    recorded = json.loads((BUNDLED_DIR / name / RECIPE_FILE).read_text())
    version, budget = recorded["version"], recorded["budget"]
    assert f"recipe `{name}` version {version}, budget `{budget}`" in card
    assert f"dalle recipe {name} --budget {budget} --recipe-version {version}" in card

    def comparable(description):
        # Left out: where the npm packages came from, whether FID ran, and bf16, which each
        # machine chooses by its kernels (`fast_bf16`); training settings added since the
        # recording read as their defaults
        for step in description["steps"]:
            for machine_specific in ("source", "cache_dir", "fid", "bf16"):
                step["args"].pop(machine_specific, None)
            if "run" in step["args"]:
                train = TrainConfig.from_dict(step["args"]["run"]["train"]).to_dict()
                train.pop("bf16")
                step["args"]["run"]["train"] = train
        return description

    rebuilt = build_recipe(name, Path("$RUN"), budget, version=version).describe(Path("$RUN"))
    assert comparable(recorded) == comparable(rebuilt)


@pytest.mark.parametrize("name", ["shapes", "emoji"])
def test_bundled_cards_list_their_recipes_example_prompts(name):
    """What `dalle serve` offers in its prompt box; a rerun of the recipe writes the same list."""
    examples = build_recipe(name, Path("$RUN"), "cpu").examples
    assert len(examples) >= 4 and example_prompts(BUNDLED_DIR / name) == list(examples)


def test_names_resolve_to_bundled_and_paths_stay_paths(tmp_path):
    assert resolve_pipeline("shapes") == BUNDLED_DIR / "shapes"
    assert resolve_pipeline(tmp_path) == tmp_path
    assert resolve_pipeline("./shapes") == Path("./shapes")


def test_emoji_pipeline_generates_from_the_python_api():
    out = DallePipeline.from_pretrained("emoji")("a red apple, twitter style", images=1, candidates=2)
    assert out.images.shape == (1, 3, 64, 64) and out.scores is not None


def test_generate_uses_the_bundled_shapes_pipeline_by_default(tmp_path):
    r = dalle("generate", "a small green triangle above a large red circle", "--out", tmp_path,
              "--images", "2", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    printed = r.stdout.split()
    assert printed == [str(tmp_path)] + [str(tmp_path / name) for name in
                                         ("00.png", "01.png", "grid.png", "generation.json")]
    assert all(Path(p).stat().st_size > 0 for p in printed[1:])
    # Never overwritten without --overwrite.
    again = dalle("generate", "a red circle", "--out", tmp_path, "--images", "1")
    assert again.returncode == 1 and "--overwrite" in again.stderr


def test_unknown_pipeline_names_the_bundled_ones(tmp_path):
    r = dalle("generate", "a red circle", "--pipeline", "faces", "--out", tmp_path)
    assert r.returncode == 1 and "bundled pipelines: emoji, shapes" in r.stderr


def test_saving_a_loaded_pipeline_keeps_its_card_attribution_and_licences(tmp_path):
    """The emoji art is CC-BY: a copy of the pipeline must keep its credit and licences."""
    DallePipeline.from_pretrained("emoji").save_pretrained(tmp_path / "copy")
    source = BUNDLED_DIR / "emoji"
    for name in ("README.md", "recipe.json", "ATTRIBUTION.md"):
        assert (tmp_path / "copy" / name).read_bytes() == (source / name).read_bytes(), name
    licences = sorted(p.name for p in (source / "licenses").iterdir())
    assert licences and sorted(p.name for p in (tmp_path / "copy" / "licenses").iterdir()) == licences
    assert DallePipeline.from_pretrained(tmp_path / "copy").source == tmp_path / "copy"
