"""The `dalle` command end to end, in subprocesses, as a user runs it."""

import json
import os
import subprocess
import sys

import pytest
import torch

from dalle.config import VAEConfig
from dalle.vae import DiscreteVAE

TINY = ["--image-size", "16", "--downsample", "4", "--codebook-size", "16", "--hidden", "8",
        "--decoder-init", "8", "--batch-size", "8", "--device", "cpu", "--log-every", "2"]


def dalle(*args, cwd=None, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", "from dalle.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def one_line_error(result, needle):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.stderr


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    r = dalle("data", "shapes", "--out", root, "--train", 40, "--test-seen", 0, "--test-zero-shot", 16, "--image-size", 16)
    assert r.returncode == 0, r.stderr
    return root


def test_help_shows_defaults():
    for command in (["train-vae"], ["eval-vae"], ["reconstruct"], ["data", "shapes"], ["import-openai-vae"]):
        r = dalle(*command, "--help")
        assert r.returncode == 0
    shown = "".join(dalle("train-vae", "--help").stdout.replace("│", "").split())
    assert "smallpreset:10000]" in shown and "smallpreset:0.90.999]" in shown


def test_train_resume_reconstruct_eval(shapes, tmp_path):
    run = tmp_path / "run"
    r = dalle("train-vae", "--data", shapes / "train", "--out", run, "--steps", 6, "--checkpoint-every", 3, *TINY)
    assert r.returncode == 0, r.stderr
    assert (run / "model" / "model.safetensors").exists() and (run / "samples").is_dir()
    r = dalle("train-vae", "--data", shapes / "train", "--out", run, "--steps", 6, "--resume", *TINY[:6], "--hidden", "12", *TINY[8:])
    one_line_error(r, "different model config")
    grid = tmp_path / "grid.png"
    r = dalle("reconstruct", "--vae", run / "model", "--data", shapes / "test-zero-shot", "--out", grid, "--n", 4, "--device", "cpu")
    assert r.returncode == 0 and grid.exists(), r.stderr
    r = dalle("eval-vae", "--vae", run / "model", "--data", shapes / "test-zero-shot", "--json", tmp_path / "m.json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert {"psnr", "mse", "perplexity", "codes_used", "shapes_parse"} <= metrics.keys()
    assert "PSNR" in r.stdout and "shapes parse" in r.stdout


@pytest.mark.parametrize("args, needle", [
    (["train-vae", "--data", "d", "--out", "o", "--steps", "many"], "Invalid value for '--steps'"),
    (["nosuch"], "No such command 'nosuch'"),
    (["generate", "a red circle", "--bogus"], "No such option: --bogus"),
    # The pipeline's limits (1 to 1024 per prompt), checked before anything is loaded.
    (["generate", "a red circle", "--images", "1000000000", "--candidates", "1000000000"],
     "'--images': Input should be less than or equal to 1024"),
    (["generate", "a red circle", "--candidates", "0"], "'--candidates': Input should be greater than or equal to 1")])
def test_usage_errors_are_one_line(args, needle):
    r = dalle(*args)
    one_line_error(r, needle)
    assert r.returncode == 2


@pytest.mark.parametrize("args, needle", [
    (["train-vae", "--out", "o"], "VAERun needs data (--data)"),
    (["train-vae", "--data", "d", "--out", "o", "--preset", "huge"],
     "no VAEConfig preset 'huge'; choose from tiny, small, base, paper"),
    (["train-prior", "--data", "d", "--out", "o"], "PriorRun needs tokenizer (--tokenizer)"),
    (["train-clip", "--data", "d", "--out", "o", "--tokenizer", "t", "--preset", "paper"],
     "no CLIPConfig preset 'paper'"),
    (["train-vae", "--data", "d", "--out", "o", "--preset", "tiny", "--config", "c.json"],
     "give a preset or a recorded config, not both")])
def test_bad_run_settings_are_one_line(args, needle):
    one_line_error(dalle(*args), needle)


def test_training_options_are_the_run_config_fields():
    """The training commands' options are generated from the run configs: each field is an
    option, each option a field (or --preset, --config, --resume, --help), none drift."""
    import dataclasses

    from typer.main import get_command

    from dalle.cli import app
    from dalle.config import TrainConfig
    from dalle.train import CLIPRun, PriorRun, VAERun

    commands = get_command(app).commands  # type: ignore[attr-defined]
    for name, run_class in (("train-vae", VAERun), ("train-prior", PriorRun), ("train-clip", CLIPRun)):
        options = {p.name for p in commands[name].params}
        fields = ({f.name for f in dataclasses.fields(run_class)} - {"model", "train"}
                  | {f.name for f in dataclasses.fields(run_class.model_class)} - set(run_class.derived)
                  | {f.name for f in dataclasses.fields(TrainConfig)})
        assert options == fields | {"preset", "config", "resume", "overwrite", "threads"}, name


def test_cli_names_a_missing_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = dalle("generate", "a red circle", "--out", tmp_path / "out", "--device", "cuda")
    one_line_error(r, "device 'cuda' needs CUDA")


def test_missing_data_folder(tmp_path):
    one_line_error(dalle("train-vae", "--data", tmp_path / "nope", "--out", tmp_path / "run", *TINY), "does not exist")


def test_corrupt_image_file(tmp_path):
    model_dir = tmp_path / "vae"
    DiscreteVAE(VAEConfig.tiny()).save_pretrained(model_dir)
    for content in (b"", b"not an image"):
        (tmp_path / "bad.png").write_bytes(content)
        one_line_error(dalle("reconstruct", "--vae", model_dir, "--data", tmp_path / "bad.png",
                             "--out", tmp_path / "o.png", "--device", "cpu"), "bad.png")


def test_unwritable_output(shapes, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line_error(dalle("train-vae", "--data", shapes / "train", "--out", blocker / "run", *TINY), "cannot create")
    one_line_error(dalle("data", "shapes", "--out", blocker, "--train", 1), "not a directory")


def test_config_checkpoint_mismatch(tmp_path):
    model_dir = tmp_path / "vae"
    DiscreteVAE(VAEConfig.tiny()).save_pretrained(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "codebook_size": 64}))
    one_line_error(dalle("eval-vae", "--vae", model_dir, "--data", tmp_path), "does not match")


def test_refused_pickle(tmp_path):
    evil = tmp_path / "evil.pkl"
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    evil.write_bytes(pickle.dumps(Evil()))
    one_line_error(dalle("import-openai-vae", evil, evil, "--out", tmp_path / "out"), "refused")
    assert not (tmp_path / "pwned").exists()


def test_tokenizer_codes_inspect_and_prior(shapes, tmp_path):
    torch_vae = DiscreteVAE(VAEConfig.tiny())
    torch_vae.save_pretrained(tmp_path / "vae")
    r = dalle("train-tokenizer", "--data", shapes / "train", "--out", tmp_path / "tok",
              "--bpe-vocab-size", 400, "--text-length", 16)
    assert r.returncode == 0 and "text length 16" in r.stdout, r.stderr
    r = dalle("data", "pack", "--data", shapes / "train", "--out", tmp_path / "shards", "--max-samples", 16)
    assert r.returncode == 0 and "40 image-caption pairs in 8 shards" in r.stdout, r.stderr
    for source in (shapes / "train", tmp_path / "shards"):
        r = dalle("encode-dataset", "--vae", tmp_path / "vae", "--data", source,
                  "--out", tmp_path / "codes" / source.name, "--batch-size", 16, "--device", "cpu")
        assert r.returncode == 0 and "40 images -> 4x4 codes" in r.stdout, r.stderr
    r = dalle("data", "inspect", tmp_path / "shards", "--tokenizer", tmp_path / "tok",
              "--grid", tmp_path / "grid.png", "--image-size", 16)
    assert r.returncode == 0, r.stderr
    assert "pairs kept        40" in r.stdout and "caption tokens" in r.stdout
    assert (tmp_path / "grid.png").exists()
    r = dalle("train-prior", "--data", tmp_path / "codes" / "train", "--tokenizer", tmp_path / "tok",
              "--out", tmp_path / "prior", "--dim", 32, "--depth", 2,
              "--heads", 2, "--head-dim", 16, "--conv-kernel", 3, "--steps", 4, "--batch-size", 8,
              "--device", "cpu", "--log-every", 2, "--val-data", tmp_path / "codes" / "shards")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "prior" / "model" / "model.safetensors").exists()
    assert "val_image_loss" in (tmp_path / "prior" / "metrics.csv").read_text()


def test_a_run_records_its_config_and_reruns_from_it(shapes, tmp_path):
    run, again = tmp_path / "run", tmp_path / "again"
    r = dalle("train-vae", "--data", shapes / "train", "--out", run, "--preset", "tiny", "--steps", 4,
              "--checkpoint-every", 2, "--batch-size", 8, "--device", "cpu", "--sample-every", 0)
    assert r.returncode == 0, r.stderr
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["model"] == {**VAEConfig.tiny().to_dict(), "tau_steps": 4, "kl_warmup_steps": 2}
    assert recorded["train"]["betas"] == [0.9, 0.999] and recorded["train"]["steps"] == 4
    # --config reruns it elsewhere; the options given override the file.
    r = dalle("train-vae", "--config", run / "config.json", "--out", again, "--steps", 2)
    assert r.returncode == 0, r.stderr
    rerun = json.loads((again / "config.json").read_text())
    assert rerun["out"] == str(again) and rerun["train"]["steps"] == 2
    assert rerun["model"] == {**recorded["model"], "tau_steps": 2, "kl_warmup_steps": 1}
    assert {k: v for k, v in rerun["train"].items() if k != "steps"} == {
        k: v for k, v in recorded["train"].items() if k != "steps"}
    # --resume alone continues the run as recorded (here: already finished, nothing to do).
    r = dalle("train-vae", "--out", run, "--resume")
    assert r.returncode == 0, r.stderr


def test_data_errors_are_one_line(tmp_path):
    one_line_error(dalle("data", "fashion-mnist", "--out", tmp_path / "f", "--root", tmp_path),
                   "apt-get install dataset-fashion-mnist")
    one_line_error(dalle("data", "emoji", "--out", tmp_path / "e", "--from", tmp_path),
                   "emoji-datasource")
    one_line_error(dalle("train-classifier", "--out", tmp_path / "c", "--root", tmp_path),
                   "apt-get install dataset-fashion-mnist")
    one_line_error(dalle("train-tokenizer", "--data", tmp_path / "nothing", "--out", tmp_path / "t"),
                   "no caption source")
    one_line_error(dalle("encode-dataset", "--vae", tmp_path / "novae", "--data", tmp_path,
                         "--out", tmp_path / "c"), "no model directory")


def test_train_clip_command(shapes, tmp_path):
    assert dalle("train-tokenizer", "--data", shapes / "train", "--out", tmp_path / "tok",
                 "--text-length", 16).returncode == 0
    r = dalle("train-clip", "--data", shapes / "train", "--tokenizer", tmp_path / "tok",
              "--out", tmp_path / "clip", "--val-data", shapes / "test-zero-shot", "--image-size", 16,
              "--patch-size", 4, "--image-width", 16, "--text-width", 16, "--embed-dim", 16,
              "--image-depth", 1, "--text-depth", 1, "--image-heads", 2, "--text-heads", 2,
              "--steps", 3, "--batch-size", 8, "--device", "cpu", "--log-every", 1, "--eval-every", 3)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "clip" / "model" / "model.safetensors").exists()
    assert "val_image_to_text" in (tmp_path / "clip" / "metrics.csv").read_text()


def test_generate_writes_images_and_never_overwrites(tmp_path):
    from test_pipeline import tiny_pipeline

    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    args = ["generate", "a large red circle", "--pipeline", tmp_path / "pipe", "--out", tmp_path / "out",
            "--images", 2, "--candidates", 4, "--device", "cpu"]
    r = dalle(*args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(tmp_path / "out")] + [
        str(tmp_path / "out" / n) for n in ("00.png", "01.png", "grid.png", "generation.json")]
    one_line_error(dalle(*args), "exists; pass --overwrite")
    assert dalle(*args, "--overwrite").returncode == 0
    one_line_error(dalle("generate", "  ", "--pipeline", tmp_path / "pipe", "--out", tmp_path / "o2"),
                   "the prompt is empty")


def test_generate_without_out_writes_each_run_into_a_new_folder(tmp_path):
    from PIL import Image

    from test_pipeline import tiny_pipeline

    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    args = ["generate", "A large red circle!", "--pipeline", tmp_path / "pipe", "--images", 1,
            "--candidates", 2, "--seed", 5, "--device", "cpu"]
    runs = [dalle(*args, cwd=tmp_path) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    folders = sorted((tmp_path / "outputs").iterdir())
    assert [r.stdout.split()[0] for r in runs] == [str(f.relative_to(tmp_path)) for f in folders]
    assert len(folders) == 2 and folders[0].name.endswith("_a-large-red-circle")
    assert folders[1].name.endswith(("_a-large-red-circle", "_a-large-red-circle-2"))
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == ["00.png", "generation.json", "grid.png"]
        record = json.loads((folder / "generation.json").read_text())
        assert (record["prompt"], record["seed"], record["candidates"]) == ("A large red circle!", 5, 2)
        assert record["pipeline"] == str(tmp_path / "pipe")
        with Image.open(folder / "00.png") as image:
            assert image.text["prompt"] == "A large red circle!" and image.text["seed"] == "5"
            assert json.loads(image.text["clip_score"]) == record["images"][0]["clip_score"]


def test_generate_completes_an_image_and_names_a_bad_one(tmp_path):
    from PIL import Image

    from test_pipeline import tiny_pipeline

    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    Image.new("RGB", (40, 30), "red").save(tmp_path / "start.png")
    (tmp_path / "notes.png").write_text("not a picture")
    Image.new("1", (10000, 9000)).save(tmp_path / "bomb.png")  # 11 kB, over Pillow's pixel limit
    args = ["generate", "a large red circle", "--pipeline", tmp_path / "pipe", "--images", 1,
            "--candidates", 1, "--device", "cpu", "--keep-rows", 1, "--init-image"]
    r = dalle(*args, tmp_path / "start.png", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "00.png").exists()
    record = json.loads((tmp_path / "out" / "generation.json").read_text())
    assert (record["init_image"], record["keep_rows"]) == (str(tmp_path / "start.png"), 1)
    one_line_error(dalle(*args, tmp_path / "missing.png", "--out", tmp_path / "o2"),
                   "--init-image " + str(tmp_path / "missing.png") + " is not a file")
    one_line_error(dalle(*args, tmp_path / "notes.png", "--out", tmp_path / "o3"),
                   "is not an image Pillow can read")
    one_line_error(dalle(*args, tmp_path / "bomb.png", "--out", tmp_path / "o4"),
                   "is over Pillow's decompression-bomb limit")


def test_a_bug_keeps_its_traceback_and_debug_shows_any(tmp_path):
    """A user's mistake is one line; --debug or DALLE_DEBUG=1 shows its traceback; an error that
    is not the user's (here a RuntimeError planted in the pipeline loader) always shows one."""
    missing = ["generate", "a red circle", "--pipeline", tmp_path / "nothing", "--out", tmp_path / "o"]
    one_line_error(dalle(*missing), "no pipeline directory")
    for shown in (dalle("--debug", *missing), dalle(*missing, env={"DALLE_DEBUG": "1"})):
        assert shown.returncode == 1 and "Traceback" in shown.stderr
        assert shown.stderr.strip().splitlines()[-1].startswith("FileNotFoundError: no pipeline directory")
    plant = ("import dalle.pipeline as p, dalle.cli as c\n"
             "def bug(*a, **k): raise RuntimeError('planted bug')\n"
             "p.DallePipeline.from_pretrained = bug\nc.main()")
    r = subprocess.run([sys.executable, "-c", plant, *map(str, missing)], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 1 and "Traceback" in r.stderr and r.stderr.strip().endswith("RuntimeError: planted bug")
