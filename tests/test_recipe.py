"""`dalle recipe`: every stage end to end at tiny sizes, the model card, and resuming."""

import dataclasses
import json

import pytest
import torch
from safetensors import safe_open

from dalle import recipe as recipe_module
from dalle.card import example_prompts
from dalle.config import VAEConfig
from dalle.hub import read_front_matter
from dalle.pipeline import DallePipeline
from dalle.recipe import (
    RECIPE_FILE,
    VERSIONS,
    Recipe,
    Step,
    _stage_time,
    build_recipe,
    emoji_recipe,
    run_recipe,
    shapes_recipe,
)
from test_cli import dalle
from test_data_emoji import make_source
from test_data_fashion_mnist import fake_fashion_mnist


def weight_dtypes(model_dir):
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return {str(f.get_slice(k).get_dtype()) for k in f.keys()}


def test_quick_shapes_recipe_makes_a_pipeline_with_a_card(tmp_path):
    run = tmp_path / "run"
    r = dalle("recipe", "shapes", "--quick", "--out", run)
    assert r.returncode == 0, r.stderr
    pipeline = run / "pipeline"
    for part in ("vae", "prior", "clip"):
        assert weight_dtypes(pipeline / part) == {"BF16"}
    card = (pipeline / "README.md").read_text()
    for needed in ("## Data", "| prior |", "PSNR", "bits per image token", "| test-zero-shot | first |",
                   f"dalle recipe shapes --quick --recipe-version {VERSIONS['shapes']}",
                   "guidance scale 2.0", f"recipe `shapes` version {VERSIONS['shapes']}",
                   "dalle train-prior --config $RUN/prior/config.json"):
        assert needed in card
    assert read_front_matter(card)["license"] == "mit"  # the Hub's front matter leads the card
    assert example_prompts(pipeline) == list(shapes_recipe(run, "quick").examples)  # `dalle serve` offers them
    # recipe.json is the recipe that made it, portable ($RUN), and each training run recorded itself.
    recorded = json.loads((pipeline / RECIPE_FILE).read_text())
    assert recorded == build_recipe("shapes", run, "quick").describe(run)
    assert str(run) not in (pipeline / RECIPE_FILE).read_text()
    prior_run = json.loads((run / "prior" / "config.json").read_text())
    assert prior_run["train"]["betas"] == [0.9, 0.96] and prior_run["model"]["dim"] == 32
    # What the data fixed is recorded as such in recipe.json, and as trained in the run's config.
    recorded_prior = next(s["args"]["run"]["model"] for s in recorded["steps"] if s["name"] == "train-prior")
    assert recorded_prior["codebook_size"] == recorded_prior["grid_size"] == "from the data"
    vae = VAEConfig.load(run / "vae" / "model" / "config.json")
    assert (prior_run["model"]["codebook_size"], prior_run["model"]["grid_size"]) == (vae.codebook_size, vae.grid_size)
    out = DallePipeline.from_pretrained(pipeline)("a small red circle", images=1, candidates=2)
    assert out.images.shape == (1, 3, 64, 64)
    # A second call finds every stage done and only rewrites the card.
    again = dalle("recipe", "shapes", "--quick", "--out", run)
    assert again.returncode == 0 and again.stdout.count("done earlier, skipped") == len(shapes_recipe(run, "quick").steps)


def test_quick_emoji_recipe_ships_the_licences(tmp_path):
    source = make_source(tmp_path / "npm")
    run = tmp_path / "run"
    r = dalle("recipe", "emoji", "--quick", "--out", run, "--from", source)
    assert r.returncode == 0, r.stderr
    pipeline = run / "pipeline"
    assert (pipeline / "ATTRIBUTION.md").exists() and any((pipeline / "licenses").iterdir())
    card = (pipeline / "README.md").read_text()
    assert "CC-BY-4.0" in card and "r_precision_2" in card
    assert read_front_matter(card)["license_name"] == "apache-2.0-and-cc-by-4.0-and-mit"


@pytest.mark.slow  # 8 s; the quick shapes and emoji recipes run by default
def test_quick_fashion_mnist_recipe_reports_label_accuracy(tmp_path):
    fake_fashion_mnist(tmp_path / "idx", n_train=32, n_test=8)
    run = tmp_path / "run"
    r = dalle("recipe", "fashion-mnist", "--quick", "--out", run, "--from", tmp_path / "idx")
    assert r.returncode == 0, r.stderr
    results = json.loads((run / "eval" / "results.json").read_text())
    assert 0 <= results["label_accuracy"] <= 1
    assert DallePipeline.from_pretrained(run / "pipeline").vae.config.image_size == 32
    card = (run / "pipeline" / "README.md").read_text()
    assert "Zalando" in card and read_front_matter(card)["datasets"] == ["zalando-datasets/fashion_mnist"]


@pytest.mark.parametrize("left,earlier,stage_note", [
    ("checkpoint.pt", {"trained_seconds": 30.0}, "resumed, earlier attempts included"),
    ("checkpoint.pt", {}, "resumed, last attempt"),  # written before checkpoints recorded the time
    ("progress.json", {"rows": 16, "seconds": 30.0}, "resumed, earlier attempts included"),
    ("progress.json", {"rows": 16}, "resumed, last attempt"),
])
def test_interrupted_recipe_resumes_where_it_stopped(tmp_path, monkeypatch, left, earlier, stage_note):
    monkeypatch.setattr("dalle.recipe.model_card", lambda recipe, run: "card")
    run = tmp_path / "run"
    calls = []

    def data(out):
        calls.append(("data", False))
        (run / "data").mkdir(exist_ok=True)

    def train(out, resume=False):
        calls.append(("train", resume))
        if not resume:  # dies after writing a checkpoint
            (run / "train").mkdir(exist_ok=True)
            if left.endswith(".pt"):
                torch.save(earlier, run / "train" / left)
            else:
                (run / "train" / left).write_text(json.dumps(earlier))
            raise KeyboardInterrupt

    def last(out):
        calls.append(("last", False))

    recipe = Recipe("toy", 1, "quick", [Step("data", data, {"out": run / "data"}, rebuild="data"),
                                        Step("train", train, {"out": run / "train"},
                                             resume_if=f"train/{left}"),
                                        Step("last", last, {"out": run / "last"})],
                    evaluation="none.json", data_note="toy")
    (run / "pipeline").mkdir(parents=True)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, run, echo=lambda line: None)
    assert calls == [("data", False), ("train", False)]
    record = json.loads((run / "stages" / "data.json").read_text())
    assert record["args"] == {"out": "$RUN/data"} and record["function"].endswith(".data")
    assert not (run / "stages" / "train.json").exists()

    calls.clear()
    run_recipe(recipe, run, echo=lambda line: None)
    assert calls == [("train", True), ("last", False)]
    assert (run / "pipeline" / "README.md").read_text() == "card"
    assert json.loads((run / "pipeline" / RECIPE_FILE).read_text())["recipe"] == "toy"
    # The card counts the earlier attempt's time where what it left knows it, and otherwise
    # does not pass off the last attempt's time as the whole stage's.
    train_record, last_record = (json.loads((run / "stages" / f"{name}.json").read_text())
                                 for name in ("train", "last"))
    seconds = earlier.get("trained_seconds", earlier.get("seconds"))
    assert train_record["earlier_seconds"] == seconds
    assert train_record["seconds"] >= (seconds or 0.0)
    assert _stage_time(train_record).endswith(f"{stage_note})")
    assert "resumed" not in _stage_time(last_record)


def test_interrupted_data_stage_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setattr("dalle.recipe.model_card", lambda recipe, run: "card")
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "partial.png").write_bytes(b"half")
    (run / "pipeline").mkdir()
    seen = []

    def data_stage(out):
        seen.append(sorted(p.name for p in out.iterdir()) if out.exists() else None)

    recipe = Recipe("toy", 1, "quick", [Step("data", data_stage, {"out": run / "data"}, rebuild="data")],
                    evaluation="none", data_note="")
    run_recipe(recipe, run, echo=lambda line: None)
    assert seen == [None]  # the partial folder was cleared first


def test_every_step_calls_its_function_with_arguments_it_takes(tmp_path):
    """A renamed parameter breaks a recipe here, not hours into a run."""
    import inspect

    for name in ("shapes", "emoji", "fashion-mnist"):
        for budget in ("quick", "cpu", "gpu"):
            for step in build_recipe(name, tmp_path, budget).steps:
                signature = inspect.signature(step.function)
                signature.bind(**step.args, **step.restart)
                if step.resume_if:
                    assert "resume" in signature.parameters, step.name
                json.dumps(step.describe(tmp_path))  # every argument is recordable


def test_unknown_recipe_is_one_line():
    r = dalle("recipe", "faces")
    assert r.returncode == 1 and r.stderr.strip() == "error: unknown recipe 'faces'; choose from shapes, shapes-256, emoji, fashion-mnist"


def test_budgets_change_training_lengths_not_model_sizes(tmp_path):
    def runs(recipe):
        return {s.name: s.args["run"] for s in recipe.steps if "run" in s.args}

    def others(recipe):
        return {s.name: s.describe(tmp_path) for s in recipe.steps if "run" not in s.args}

    cpu, gpu = runs(shapes_recipe(tmp_path, "cpu")), runs(shapes_recipe(tmp_path, "gpu"))
    assert list(cpu) == list(gpu) == ["train-vae", "train-prior", "train-clip"]
    assert others(shapes_recipe(tmp_path, "cpu")) == others(shapes_recipe(tmp_path, "gpu"))
    for name in cpu:  # the same architecture on both; only the training differs
        assert cpu[name].model == gpu[name].model or name == "train-vae"
        assert cpu[name].train != gpu[name].train
    assert (cpu["train-vae"].model.hidden, cpu["train-prior"].model.dim) == (32, 256)  # the small presets
    emoji_cpu, emoji_gpu = runs(emoji_recipe(tmp_path, "cpu")), runs(emoji_recipe(tmp_path, "gpu"))
    assert emoji_gpu["train-prior"].model.dropout == 0.1
    assert emoji_cpu["train-prior"].train.steps == 9000
    assert cpu["train-prior"].train.steps == 5000 and cpu["train-clip"].train.steps == 2700
    # The dVAE's schedules follow each budget's length (the preset's are for 150,000 steps).
    assert gpu["train-vae"].model.tau_steps == 4000 and gpu["train-vae"].model.kl_warmup_steps == 2000
    # The recipe's own settings win over the budget's.
    assert cpu["train-vae"].train.lr == 1e-3 and cpu["train-vae"].model.likelihood == "gaussian"
    emoji_data = next(s for s in emoji_recipe(tmp_path, "cpu").steps if s.name == "data")
    assert emoji_data.args["skin_tones"] is False
    assembles = [next(s for s in shapes_recipe(tmp_path, b).steps if s.name == "assemble") for b in ("cpu", "gpu")]
    assert all(a.args["sampling"].guidance_scale == 2.0 for a in assembles)


@pytest.mark.parametrize("fast", [True, False])
def test_cpu_stages_train_and_sample_in_bf16_only_where_it_is_fast(tmp_path, monkeypatch, fast):
    monkeypatch.setattr(recipe_module, "fast_bf16", lambda device="auto": fast)
    for recipe in (emoji_recipe(tmp_path, "cpu"), shapes_recipe(tmp_path, "cpu")):
        steps = {s.name: s.args for s in recipe.steps}
        assert steps["train-prior"]["run"].train.bf16 is fast and steps["eval"]["bf16"] is fast
        assert steps["assemble"]["bf16_weights"]  # storage only: loading casts back
    emoji_vae = next(s for s in emoji_recipe(tmp_path, "cpu").steps if s.name == "train-vae")
    assert emoji_vae.args["run"].train.bf16 is fast


def test_versions_are_kept_and_named(tmp_path):
    assert build_recipe("shapes", tmp_path, "cpu", version=1).version == 1
    r = dalle("recipe", "shapes", "--out", tmp_path, "--recipe-version", "7")
    assert r.returncode == 1 and "the shapes recipe has versions 1 to" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--budget", "tpu"], "unknown budget 'tpu'"),
    (["--budget", "quick"], "--quick is its own budget"),
    (["--quick", "--budget", "gpu"], "--quick is its own budget"),
    (["--from", "somewhere"], "the shapes recipe makes its own data; --from is for emoji and fashion-mnist"),
    (["--cache", "somewhere"], "--cache keeps the emoji recipe's npm downloads")])
def test_bad_options_are_one_line(tmp_path, args, message):
    r = dalle("recipe", "shapes", "--out", tmp_path, *args)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr


def test_version_2_only_adds_the_priors_sample_grids(tmp_path):
    """An improved recipe lands as a new version; version 1 still builds what it built."""
    for name in ("shapes", "emoji", "fashion-mnist"):
        old, new = (next(s.args["run"] for s in build_recipe(name, tmp_path, "cpu", version=v).steps
                         if s.name == "train-prior") for v in (1, 2))
        assert (old.vae, old.train.sample_every) == (None, 0)
        assert (new.vae, new.train.sample_every) == (str(tmp_path / "vae/model"), 500)
        assert dataclasses.replace(new, vae=None, train=dataclasses.replace(new.train, sample_every=0)) == old
