"""`dalle recipe`: every stage end to end at tiny sizes, the model card, and resuming."""

import json

import pytest
from safetensors import safe_open

from dalle.pipeline import DallePipeline
from dalle.recipe import Recipe, Stage, _stage_time, _with_flags, emoji_recipe, run_recipe, shapes_recipe
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
                   "dalle recipe shapes --budget quick", "guidance scale 2.0",
                   "dalle train-prior --out $RUN/prior"):
        assert needed in card
    out = DallePipeline.from_pretrained(pipeline)("a small red circle", images=1, candidates=2)
    assert out.images.shape == (1, 3, 64, 64)
    # A second call finds every stage done and only rewrites the card.
    again = dalle("recipe", "shapes", "--quick", "--out", run)
    assert again.returncode == 0 and again.stdout.count("done earlier, skipped") == len(shapes_recipe(run, "quick").stages)


def test_quick_emoji_recipe_ships_the_licences(tmp_path):
    source = make_source(tmp_path / "npm")
    run = tmp_path / "run"
    r = dalle("recipe", "emoji", "--quick", "--out", run, "--from", source)
    assert r.returncode == 0, r.stderr
    pipeline = run / "pipeline"
    assert (pipeline / "ATTRIBUTION.md").exists() and any((pipeline / "licenses").iterdir())
    card = (pipeline / "README.md").read_text()
    assert "CC-BY-4.0" in card and "r_precision_2" in card


def test_quick_fashion_mnist_recipe_reports_label_accuracy(tmp_path):
    fake_fashion_mnist(tmp_path / "idx", n_train=32, n_test=8)
    run = tmp_path / "run"
    r = dalle("recipe", "fashion-mnist", "--quick", "--out", run, "--from", tmp_path / "idx")
    assert r.returncode == 0, r.stderr
    results = json.loads((run / "eval" / "results.json").read_text())
    assert 0 <= results["label_accuracy"] <= 1
    assert DallePipeline.from_pretrained(run / "pipeline").vae.config.image_size == 32
    assert "Zalando" in (run / "pipeline" / "README.md").read_text()


def test_interrupted_recipe_resumes_where_it_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr("dalle.recipe.model_card", lambda recipe, run: "card")
    run = tmp_path / "run"
    recipe = Recipe("toy", "quick", [Stage("data", ["data"], rebuild="data"),
                            Stage("train", ["train"], resume_if="train/checkpoint.pt"),
                            Stage("last", ["last"])], evaluation="none.json", data_note="toy")
    calls = []

    def interrupted(args):
        calls.append(args)
        if args[0] == "data":
            (run / "data").mkdir(exist_ok=True)
        if args[0] == "train":  # dies after writing a checkpoint
            (run / "train").mkdir(exist_ok=True)
            (run / "train" / "checkpoint.pt").write_bytes(b"")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, run, interrupted, echo=lambda line: None)
    assert calls == [["data"], ["train"]]
    assert json.loads((run / "stages" / "data.json").read_text())["command"] == ["dalle", "data"]
    assert not (run / "stages" / "train.json").exists()

    calls.clear()
    (run / "pipeline").mkdir()
    run_recipe(recipe, run, calls.append, echo=lambda line: None)
    assert calls == [["train", "--resume"], ["last"]]
    assert (run / "pipeline" / "README.md").read_text() == "card"
    # The card must not pass off the last attempt's time as the whole stage's.
    train, last = (json.loads((run / "stages" / f"{name}.json").read_text()) for name in ("train", "last"))
    assert _stage_time(train).endswith("resumed, last attempt)") and "resumed" not in _stage_time(last)


def test_interrupted_data_stage_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setattr("dalle.recipe.model_card", lambda recipe, run: "card")
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "partial.png").write_bytes(b"half")
    (run / "pipeline").mkdir()
    seen = []

    def data_stage(args):
        seen.append(sorted(p.name for p in (run / "data").iterdir()) if (run / "data").exists() else None)

    recipe = Recipe("toy", "quick", [Stage("data", ["data"], rebuild="data")], evaluation="none", data_note="")
    run_recipe(recipe, run, data_stage, echo=lambda line: None)
    assert seen == [None]  # the partial folder was cleared first


def test_unknown_recipe_is_one_line():
    r = dalle("recipe", "faces")
    assert r.returncode == 1 and r.stderr.strip() == "error: unknown recipe 'faces'; choose from shapes, emoji, fashion-mnist"


def test_budgets_change_training_lengths_not_model_sizes(tmp_path):
    def stages(recipe):
        return {s.name: s.args for s in recipe.stages}

    cpu, gpu = stages(shapes_recipe(tmp_path, "cpu")), stages(shapes_recipe(tmp_path, "gpu"))
    assert cpu.keys() == gpu.keys()
    assert [name for name in cpu if cpu[name] != gpu[name]] == ["train-vae", "train-prior", "train-clip"]
    for name in ("train-vae", "train-prior", "train-clip"):  # same architecture flags on both
        assert not {"--dim", "--depth", "--hidden", "--width"} & set(cpu[name] + gpu[name])
    assert "--dropout" in stages(emoji_recipe(tmp_path, "gpu"))["train-prior"]
    emoji = stages(emoji_recipe(tmp_path, "cpu"))  # a switch is added once, a value replaced
    assert emoji["train-vae"].count("--bf16") == 1 and emoji["train-prior"].count("--steps") == 1
    assert _with_flags(["--bf16", "--steps", "1"], ("--bf16", "--steps", "2", "--tf32")) == [
        "--bf16", "--steps", "2", "--tf32"]
    prior = cpu["train-prior"]  # a recipe's own flag replaces the budget's rather than repeating it
    assert prior.count("--steps") == 1 and prior[prior.index("--steps") + 1] == "5000"
    assert emoji["train-prior"][emoji["train-prior"].index("--steps") + 1] == "9000"
    assert "--no-skin-tones" in emoji["data"]
    assert cpu["assemble"][-2:] == gpu["assemble"][-2:] == ["--guidance", "2"]


@pytest.mark.parametrize("args, message", [
    (["--budget", "tpu"], "unknown budget 'tpu'"),
    (["--quick", "--budget", "gpu"], "--quick is its own budget"),
    (["--from", "somewhere"], "the shapes recipe makes its own data; --from is for emoji and fashion-mnist"),
    (["--cache", "somewhere"], "--cache keeps the emoji recipe's npm downloads")])
def test_bad_options_are_one_line(tmp_path, args, message):
    r = dalle("recipe", "shapes", "--out", tmp_path, *args)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr
