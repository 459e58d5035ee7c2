"""README.md's "Train on your own data" commands, exactly as written, on a small folder made here
(only the training lengths are cut), end to end on the CPU: they make a pipeline that generates."""

import shlex
from pathlib import Path

from dalle.data.shapes import write_shapes
from test_cli import dalle

README = Path(__file__).parents[1] / "README.md"
SHORT = ["--steps", "3", "--device", "cpu"]  # what the test adds to each training command


def own_data_commands(block_index: int = 1) -> list[list[str]]:
    """The commands of the section's first (the recipe) or second (stage by stage) bash block."""
    section = README.read_text().split("## Train on your own data", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n")[1 + block_index].split("```", 1)[0].replace("\\\n", " ")
    commands = []
    for line in block.splitlines():
        line = line.split("  #")[0].strip()
        if line.startswith("dalle "):
            commands.append(shlex.split(line)[1:])
    return commands


def test_the_own_data_commands_run_as_written(tmp_path):
    commands = own_data_commands()
    assert [c[0] for c in commands] == ["data", "train-tokenizer", "train-vae", "encode-dataset",
                                        "train-prior", "train-clip", "assemble", "generate"]
    write_shapes(tmp_path / "my-data", {"train": 48}, seed=0, image_size=64)
    for args in commands:
        r = dalle(*args, *(SHORT if args[0].startswith("train-") and args[0] != "train-tokenizer" else []),
                  cwd=tmp_path)
        assert r.returncode == 0, (args, r.stderr)
    [run] = (tmp_path / "outputs").iterdir()  # generate's own folder, named from the time and prompt
    images = sorted(p.name for p in run.glob("*.png"))
    assert images == ["00.png", "01.png", "02.png", "03.png", "grid.png"]


def test_the_own_data_recipe_runs_as_written(tmp_path):
    """The one-command way, with --quick in place of the budget (the test has no 30 minutes)."""
    commands = own_data_commands(0)
    assert [c[:2] for c in commands] == [["recipe", "folder"], ["generate", "a caption in the style of yours"]]
    write_shapes(tmp_path / "my-data", {"train": 24}, seed=0, image_size=64)
    recipe = commands[0]
    at = recipe.index("--budget")
    r = dalle(*recipe[:at], *recipe[at + 2:], "--quick", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.index("plan (quick") < r.stdout.index("[train-vae]")
    r = dalle(*commands[1], "--images", "1", "--candidates", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "outputs").glob("*_a-caption-in-the-style-of-yours/00.png"))) == 1
