"""`dalle recipe folder`: a user's own pictures to a pipeline, every setting from the data and the
budget, the plan printed first and kept in plan.json so that a rerun continues it."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from dalle.data.codes import CodesDataset
from dalle.data.shards import pack_shards
from dalle.errors import DalleError
from dalle.folder_recipe import (
    MIN_PRIOR_EPOCHS,
    PLAN_FILE,
    PRIOR_SIZES,
    Survey,
    choose_prior_size,
    code_views,
    describe_plan,
    is_validation,
    load_or_make_plan,
    model_settings,
    parse_budget,
    split_data,
    survey,
)
from dalle.pipeline import DallePipeline
from test_cli import dalle, one_line_error

SCRIPTS = Path(__file__).parents[1] / "scripts"


def script_module(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def glyph_module():
    return script_module("glyph_folder")


@pytest.fixture(scope="module")
def glyphs(tmp_path_factory):
    """40 pictures the project does not ship, with a licence and an attribution beside them."""
    root = tmp_path_factory.mktemp("own") / "glyphs"
    held_out = glyph_module().write_glyph_folder(root, pictures=40, held_out=4, size=32)
    (root / "LICENSE.md").write_text("CC0: the test rendered these.\n")
    (root / "ATTRIBUTION.md").write_text("Rendered by tests/test_folder_recipe.py.\n")
    return root, held_out


def test_glyph_folder_holds_out_combinations_whose_parts_it_shows(glyphs):
    root, held_out = glyphs
    captions = {p.read_text().strip() for p in root.glob("0*.txt")}
    assert len(held_out) == 4 and not captions & set(held_out)
    shown_words = {w for c in captions for w in c.split()}
    assert all(set(c.split()) <= shown_words for c in held_out)
    assert (root.parent / "glyphs.held-out.txt").read_text().splitlines() == held_out


def test_quick_folder_recipe_plans_first_then_trains_a_pipeline_that_keeps_the_notices(
        glyphs, tmp_path, monkeypatch, capsys):
    root, held_out = glyphs
    run = tmp_path / "run"
    r = dalle("recipe", "folder", root, "--out", run, "--quick")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    # The plan, derived from the data, comes before the first stage.
    assert out.index("plan (quick") < out.index("[data]")
    assert "32 px -> 8x8 codes of" in out and "the training pictures x 2 views" in out
    plan = json.loads((run / PLAN_FILE).read_text())
    assert plan["settings"]["vae"]["image_size"] == 32 and plan["settings"]["vae"]["downsample"] == 4
    # The held-out split links to the user's files and takes none from training.
    train = {p.name for p in (run / "data/train").glob("*.txt")}
    val = {p.name for p in (run / "data/val").glob("*.txt")}
    assert val and not train & val and len(train | val) == 40
    # The plan counted the split that the run made.
    assert f"{len(train)} training pairs and {len(val)} held out (folder), median side 32 px" in out
    # The prior's training codes hold each picture twice (as it is, then cropped); val's once.
    assert CodesDataset(run / "codes/train").index["count"] == 2 * len(train)
    assert CodesDataset(run / "codes/val").index["count"] == len(val)
    assert (run / "data/train" / next(iter(train))).is_symlink()
    pipeline = run / "pipeline"
    assert (pipeline / "LICENSE.md").read_text() == "CC0: the test rendered these.\n"
    assert (pipeline / "ATTRIBUTION.md").exists()
    card = (pipeline / "README.md").read_text()
    for needed in (f"dalle recipe folder {root} --out RUN --quick", "LICENSE.md",
                   f"Pairs per split: train {len(train)}, val {len(val)}.", "| prior |"):
        assert needed in card, needed
    pipe = DallePipeline.from_pretrained(pipeline)
    assert pipe.clip is not None
    images = pipe(held_out[0], images=1, candidates=2, seed=0).images
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()
    # The judge of docs/results.md reads what it draws for the held-out and for seen captions.
    judge = script_module("judge_glyphs")
    for extra in ([], ["--seen"]):
        monkeypatch.setattr("sys.argv", ["judge_glyphs", "--pipeline", str(pipeline), "--data", str(root),
                                         "--images", "1", "--candidates", "2", "--out", str(tmp_path / "j.png"),
                                         *extra])
        judge.main()
        printed = capsys.readouterr().out
        count = len(held_out) if not extra else 10
        assert "read right" in printed and "letter colour background all" in printed
        assert "all captions: letter " in printed and f"/{count} (" in printed
        assert (tmp_path / "j.png").is_file()
    # Saved elsewhere, the pipeline keeps its card and the data's notices.
    pipe.save_pretrained(tmp_path / "copy")
    assert {"README.md", "LICENSE.md", "ATTRIBUTION.md", "recipe.json"} <= {p.name for p in (tmp_path / "copy").iterdir()}
    # `dalle assemble` of the same parts writes its own card and finds the notices beside the data.
    r = dalle("assemble", "--tokenizer", run / "tokenizer", "--vae", run / "vae/model", "--prior",
              run / "prior/model", "--clip", run / "clip/model", "--out", tmp_path / "assembled")
    assert r.returncode == 0, r.stderr
    card = (tmp_path / "assembled" / "README.md").read_text()
    assert f"The dVAE trained on `{run / 'data/train'}`" in card and "`LICENSE.md`" in card
    assert "| prior | " in card and "steps of" in card and "last loss" in card
    assert (tmp_path / "assembled" / "LICENSE.md").exists()
    # Run again: the recorded plan is read (not made anew) and every stage is done.
    again = dalle("recipe", "folder", root, "--out", run, "--quick")
    assert again.returncode == 0, again.stderr
    assert "[plan] the plan made" in again.stdout and "timing" not in again.stdout
    assert again.stdout.count("done earlier, skipped") == 10
    # Another thread count than the plan's goes on, with a warning that exactness is lost.
    other = dalle("recipe", "folder", root, "--out", run, "--quick", "--threads", "2")
    assert other.returncode == 0 and "will not be bit-identical" in other.stderr
    # Another budget for the same run folder is refused in one line.
    one_line_error(dalle("recipe", "folder", root, "--out", run, "--budget", "20"),
                   "was planned for")


@pytest.mark.parametrize("budget, minutes", [("minutes", 10), ("cpu", 90), ("gpu", 15), ("12.5", 12.5)])
def test_budgets_are_minutes(budget, minutes):
    assert parse_budget(budget) == minutes


@pytest.mark.parametrize("budget", ["0", "-3", "soon", "nan", "1e9"])
def test_a_budget_that_is_not_one_is_refused(budget):
    with pytest.raises(DalleError, match="is not a budget"):
        parse_budget(budget)


@pytest.mark.slow  # 14 s: four CLI processes
def test_too_few_pairs_and_a_missing_folder_are_one_line(tmp_path):
    glyph_module().write_glyph_folder(tmp_path / "few", pictures=5, held_out=0, size=16)
    one_line_error(dalle("recipe", "folder", tmp_path / "few", "--out", tmp_path / "a", "--quick"),
                   "has 5 image-caption pairs")
    one_line_error(dalle("recipe", "folder", tmp_path / "none", "--out", tmp_path / "b", "--quick"),
                   "does not exist")
    one_line_error(dalle("recipe", "folder", "--out", tmp_path / "c", "--quick"), "needs the data")
    one_line_error(dalle("recipe", "shapes", tmp_path, "--quick"), "makes its own data")


def fake_timing(*args, **kwargs):
    return {"vae": 0.1, "clip": 0.2, "encode": 0.002,
            **{f"prior-{size}": 0.1 * (i + 1) for i, size in enumerate(PRIOR_SIZES)},
            **{f"generate-{size}": 0.02 * (i + 1) for i, size in enumerate(PRIOR_SIZES)}}


def test_the_budget_is_split_among_the_stages_and_the_plan_fits_it(glyphs, tmp_path, monkeypatch):
    import dalle.folder_recipe as folder_recipe

    monkeypatch.setattr(folder_recipe, "time_stages", fake_timing)
    root, _ = glyphs
    plans = {minutes: load_or_make_plan(root, tmp_path / str(minutes), str(minutes), lambda _: None)
             for minutes in (10, 20)}
    for minutes, plan in plans.items():
        assert 0.9 * minutes * 60 <= sum(plan["estimates"].values()) <= minutes * 60
        s = plan["settings"]
        assert s["vae"]["steps"] >= 1000 and s["prior"]["steps"] >= 500
        assert all(s[stage]["warmup_steps"] < s[stage]["steps"] for stage in ("vae", "prior", "clip"))
        # Every batch is cut to the training pairs; many passes bring the prior's dropout.
        assert s["clip"]["batch_size"] == plan["survey"]["pairs"] < 40 and s["prior"]["dropout"] == 0.1
        assert plan["views"] == code_views(plan["epochs"]["prior"]) > 1
    assert plans[20]["settings"]["prior"]["steps"] > 2 * plans[10]["settings"]["prior"]["steps"] * 0.95
    lines = describe_plan(plans[10])
    assert lines[0] == "plan for 10 minutes of this cpu (" + f"{torch.get_num_threads()} threads):"
    assert any(line.startswith("  train-prior") and "min" in line for line in lines)
    with pytest.raises(DalleError, match="leaves no time to train"):
        load_or_make_plan(root, tmp_path / "tiny", "1", lambda _: None)


def test_the_prior_is_the_largest_size_the_budget_trains_for_enough_epochs():
    per_step = fake_timing()
    sizes = list(PRIOR_SIZES)

    def seconds_for(epochs, size, pairs=3200, batch=32):
        return epochs * pairs / batch * per_step[f"prior-{size}"]

    assert choose_prior_size(seconds_for(MIN_PRIOR_EPOCHS, sizes[-1]), per_step, 32, 3200) == sizes[-1]
    assert choose_prior_size(seconds_for(MIN_PRIOR_EPOCHS - 1, sizes[-1]), per_step, 32, 3200) == sizes[-2]
    assert choose_prior_size(seconds_for(MIN_PRIOR_EPOCHS, sizes[0]), per_step, 32, 3200) == sizes[0]
    # A budget too small for any: the smallest, which learns most from the few steps it gets.
    assert choose_prior_size(1.0, per_step, 32, 3200) == sizes[0]


def test_a_short_budget_on_many_pairs_plans_a_smaller_prior(glyphs, tmp_path, monkeypatch):
    import dalle.folder_recipe as folder_recipe

    monkeypatch.setattr(folder_recipe, "time_stages", fake_timing)
    # 40 pairs at 0.1 s a step train the largest prior for hundreds of epochs in 10 minutes; made
    # 100 times slower, the same budget gives the largest fewer than MIN_PRIOR_EPOCHS.
    plan = load_or_make_plan(glyphs[0], tmp_path / "fast", "10", lambda _: None)
    assert plan["settings"]["prior"]["dim"] == PRIOR_SIZES["256x8"]["dim"]
    monkeypatch.setattr(folder_recipe, "time_stages", lambda *a, **k: {
        name: seconds * (100 if name.startswith("prior-") else 1) for name, seconds in fake_timing().items()})
    plan = load_or_make_plan(glyphs[0], tmp_path / "slow", "10", lambda _: None)
    prior = plan["settings"]["prior"]
    assert (prior["dim"], prior["depth"]) == (128, 4) and plan["epochs"]["prior"] < MIN_PRIOR_EPOCHS
    assert plan["seconds_per_step"]["prior"] == plan["seconds_per_step"]["prior-128x4"]
    assert any(line.startswith("  train-prior  4 layers of width 128;") for line in describe_plan(plan))


def test_the_time_set_aside_for_encoding_views_is_what_the_plan_encodes(glyphs, tmp_path, monkeypatch):
    import dalle.folder_recipe as folder_recipe

    # Encoding so slow that setting aside all 16 views would leave most of the budget unplanned.
    monkeypatch.setattr(folder_recipe, "time_stages", lambda *a, **k: {**fake_timing(), "encode": 1.0})
    plan = load_or_make_plan(glyphs[0], tmp_path / "run", "20", lambda _: None)
    assert 1 < plan["views"] < 16
    assert 0.9 * 20 * 60 <= sum(plan["estimates"].values()) <= 20 * 60


def test_the_prior_gets_one_view_of_each_picture_per_sixteen_epochs_up_to_sixteen():
    assert [code_views(epochs) for epochs in (0.5, 16, 17, 100, 251, 10_000)] == [1, 1, 2, 7, 16, 16]


def test_a_folder_with_other_files_but_no_plan_is_refused(glyphs, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine\n")
    with pytest.raises(DalleError, match="holds files but no plan.json"):
        load_or_make_plan(glyphs[0], tmp_path / "run", "quick", lambda _: None)


def test_sizes_follow_the_images_and_the_device():
    def found(pairs, side):
        return Survey("folder", pairs, max(1, pairs // 20), 0, side, 20, [])

    assert model_settings(found(5000, 28), gpu=False)["vae"]["image_size"] == 32
    assert model_settings(found(5000, 300), gpu=False)["vae"]["image_size"] == 64
    gpu = model_settings(found(5000, 300), gpu=True)
    assert gpu["vae"]["image_size"] == 128 and gpu["prior"]["batch_size"] == 256
    # The codebook shrinks with the code positions the data holds.
    assert model_settings(found(5000, 64), gpu=False)["vae"]["codebook_size"] == 512
    assert model_settings(found(40, 64), gpu=False)["vae"]["codebook_size"] == 128


def test_the_held_out_split_is_stable_and_takes_about_five_percent():
    names = [f"photos/{i:05d}.jpg" for i in range(4000)]
    held = [n for n in names if is_validation(n)]
    assert 0.04 < len(held) / len(names) < 0.06
    assert held == [n for n in reversed(names) if is_validation(n)][::-1]


def test_shards_hold_out_their_last_shard_as_a_folder(glyphs, tmp_path):
    root, _ = glyphs
    pack_shards(root, tmp_path / "shards", max_samples=10)
    found = survey(tmp_path / "shards")
    # pack_shards spreads the 40 pairs over 8 shards of 5: 7 train, the last one held out.
    assert found.kind == "shards" and (found.pairs, found.held_out) == (35, 5) and found.image_side == 32
    split_data(tmp_path / "shards", tmp_path / "data", found.kind)
    assert len(list((tmp_path / "data/train").glob("*.tar"))) == 7
    assert len(list((tmp_path / "data/val").glob("*.txt"))) == 5


def test_a_folder_with_train_and_val_keeps_its_split(glyphs, tmp_path):
    root, _ = glyphs
    for split, names in (("train", range(30)), ("val", range(30, 40))):
        (tmp_path / "mine" / split).mkdir(parents=True)
        for i in names:
            for suffix in (".png", ".txt"):
                (tmp_path / "mine" / split / f"{i:04d}{suffix}").symlink_to(root / f"{i:04d}{suffix}")
    found = survey(tmp_path / "mine")
    assert found.kind == "splits" and (found.pairs, found.held_out) == (30, 10)
    split_data(tmp_path / "mine", tmp_path / "data", found.kind)
    assert len(list((tmp_path / "data/val").glob("*.txt"))) == 10


def test_keep_best_is_planned_for_the_prior_and_clip_and_a_rerun_must_ask_the_same(
        glyphs, tmp_path, monkeypatch):
    import dalle.folder_recipe as folder_recipe

    monkeypatch.setattr(folder_recipe, "time_stages", fake_timing)
    root, run = glyphs[0], tmp_path / "best"
    recipe = folder_recipe.folder_recipe(root, run, "10", lambda _: None, keep_best=True)
    runs = {step.name: step.args["run"] for step in recipe.steps if "run" in step.args}
    assert runs["train-prior"].train.keep_best and runs["train-clip"].train.keep_best
    assert not runs["train-vae"].train.keep_best  # the dVAE has no validation to choose by
    assert recipe.reproduce.endswith("--budget 10 --keep-best")
    assert any("keeping its best validation" in line for line in describe_plan(
        json.loads((run / PLAN_FILE).read_text())))
    with pytest.raises(DalleError, match="planned with --keep-best"):
        folder_recipe.folder_recipe(root, run, "10", lambda _: None)
    plain = tmp_path / "plain"
    folder_recipe.folder_recipe(root, plain, "10", lambda _: None)
    with pytest.raises(DalleError, match="planned without --keep-best"):
        folder_recipe.folder_recipe(root, plain, "10", lambda _: None, keep_best=True)


def test_keep_best_is_for_the_folder_recipe_only(tmp_path):
    from typer.testing import CliRunner

    from dalle.cli import app

    result = CliRunner().invoke(app, ["recipe", "shapes", "--quick", "--keep-best", "--out",
                                      str(tmp_path / "run")])
    # The app raises the DalleError that `dalle.cli.main` prints as one line.
    assert isinstance(result.exception, DalleError)
    assert str(result.exception).startswith("--keep-best is for `dalle recipe folder`")
    assert not (tmp_path / "run").exists()


def test_every_stage_and_every_prior_size_is_timed_on_this_machine():
    from dalle.folder_recipe import time_stages
    from dalle.train.runs import CLIPRun, PriorRun, VAERun

    runs = {"vae": VAERun.create(preset="tiny", data="-", out="-", batch_size=2),
            "prior": PriorRun.create(data="-", out="-", tokenizer="-", batch_size=2),
            "clip": CLIPRun.create(preset="tiny", data="-", out="-", tokenizer="-", batch_size=2)}
    seconds = time_stages(runs, {"bpe_vocab_size": 64, "text_length": 8, "trained_vocab_size": 60}, torch.device("cpu"), 2)
    assert set(seconds) == {"vae", "encode", "clip"} | {
        f"{kind}-{size}" for kind in ("prior", "generate") for size in PRIOR_SIZES}
    assert all(value > 0 for value in seconds.values())
    # Each size is a different model: the largest's step takes longer than the smallest's.
    assert seconds["prior-256x8"] > seconds["prior-128x4"]


def test_the_timed_dvae_is_laid_out_as_training_lays_it_out(monkeypatch):
    """channels_last changes the dVAE's step time on CPU: the timing must build its dVAE with
    train_vae's own constructor, not a plain one."""
    from dalle.config import VAEConfig
    from dalle.folder_recipe import time_stages
    from dalle.train import vae as train_vae_module
    from dalle.train.runs import CLIPRun, PriorRun, VAERun

    built = []

    def recording_new_vae(config: VAEConfig):
        model = real_new_vae(config)
        built.append(model)
        return model

    real_new_vae = train_vae_module.new_vae
    monkeypatch.setattr(train_vae_module, "new_vae", recording_new_vae)
    monkeypatch.setattr("dalle.folder_recipe.PRIOR_SIZES", {"128x4": {"dim": 32, "depth": 1, "heads": 1, "head_dim": 32}})
    runs = {"vae": VAERun.create(preset="tiny", data="-", out="-", batch_size=2),
            "prior": PriorRun.create(data="-", out="-", tokenizer="-", batch_size=2),
            "clip": CLIPRun.create(preset="tiny", data="-", out="-", tokenizer="-", batch_size=2)}
    time_stages(runs, {"bpe_vocab_size": 64, "text_length": 8, "trained_vocab_size": 60},
                torch.device("cpu"), 2)
    assert len(built) == 1
    convs = [p for p in built[0].parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
