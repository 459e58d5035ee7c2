"""`TrainConfig.compile`: the units compiled for training, the one-warning fallback to eager, and
checkpoints that compiled and eager runs resume alike."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from dalle.config import TrainConfig
from dalle.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from helpers import image_folder, make_trainer, tiny_prior_config, tiny_prior_data, tiny_train_config


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Compiled code cached by one test is not reused by the next."""
    yield
    torch._dynamo.reset()


def fit(out: Path, **kwargs):
    """The tiny dVAE trained 4 steps; the trainer and the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer(out, tiny_train_config(steps=4, **kwargs))
        trainer.fit()
        trainer.close()
    return trainer, [str(w.message) for w in caught]


def assert_same_run(a: Path, b: Path) -> None:
    """Two run folders hold the same checkpoint: weights, EMA, optimizer state and RNG."""
    one, two = load_checkpoint(a / CHECKPOINT_NAME), load_checkpoint(b / CHECKPOINT_NAME)
    for part in ("model", "ema"):
        assert one[part].keys() == two[part].keys()
        for k in one[part]:
            assert torch.equal(one[part][k], two[part][k]), (part, k)
    for i, state in one["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, two["optimizer"]["state"][i][k]), (i, k)
    assert torch.equal(one["rng"][0]["cpu"], two["rng"][0]["cpu"])


def dalle(*args, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "dalle", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def failing_compile(fn, **kwargs):
    """A torch.compile whose code fails where a real compilation would: lazily, here in the
    backward (as inductor compiles it), after the eager forward has drawn from the RNG and the
    later units have written gradients."""
    def compiled(*args, **kw):
        out = fn(*args, **kw)
        torch.rand(3)

        def fail(grad):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nsecond line")

        out.register_hook(fail)
        return out
    return compiled


def test_the_flag_round_trips_and_configs_saved_without_it_still_load():
    assert TrainConfig.from_json(TrainConfig(compile=True).to_json()).compile is True
    old = {k: v for k, v in TrainConfig().to_dict().items() if k != "compile"}
    assert TrainConfig.from_dict(old).compile is False


def test_a_compilation_failing_in_the_first_step_warns_once_and_trains_as_eager(tmp_path, monkeypatch):
    fit(tmp_path / "eager")
    monkeypatch.setattr(torch, "compile", failing_compile)
    trainer, caught = fit(tmp_path / "fallback", compile=True)
    failures = [m for m in caught if "torch.compile failed" in m]
    assert failures == ["torch.compile failed (RuntimeError: InvalidCxxCompiler: No working C++ "
                        "compiler found); training without compilation"]
    assert all("forward" not in vars(unit) for unit in trainer.model.parallel_units())
    assert_same_run(tmp_path / "eager", tmp_path / "fallback")


def test_torch_compile_refusing_at_once_warns_once_and_trains_as_eager(tmp_path, monkeypatch):
    def refuse(fn, **kwargs):
        raise RuntimeError("torch.compile is not supported on this Python")

    fit(tmp_path / "eager")
    monkeypatch.setattr(torch, "compile", refuse)
    _, caught = fit(tmp_path / "fallback", compile=True)
    assert [m for m in caught if "torch.compile failed" in m] == [
        "torch.compile failed (RuntimeError: torch.compile is not supported on this Python); "
        "training without compilation"]
    assert_same_run(tmp_path / "eager", tmp_path / "fallback")


def test_compiled_units_run_in_training_only_and_compiled_and_eager_runs_resume_each_other(
        tmp_path, monkeypatch):
    calls = []

    def counting_compile(fn, **kwargs):
        def compiled(*args, **kw):
            calls.append(1)
            return fn(*args, **kw)
        return compiled

    monkeypatch.setattr(torch, "compile", counting_compile)
    straight, _ = fit(tmp_path / "straight")
    for first, second in ((True, False), (False, True)):
        out = tmp_path / f"compiled-{first}-then-{second}"
        trainer = make_trainer(out, tiny_train_config(steps=4, compile=first))
        trainer.fit(until=2)
        trainer.close()
        resumed = make_trainer(out, tiny_train_config(steps=4, compile=second), resume=True)
        resumed.fit()
        resumed.close()
        assert_same_run(tmp_path / "straight", out)
    units = len(straight.model.parallel_units())
    assert len(calls) == 2 * units * 2  # two steps of each compiled half, each unit once a step

    model = resumed.model.eval()  # compiled, but not for sampling or validation
    with torch.no_grad():
        model(torch.rand(2, 3, 16, 16), step=0)
    assert len(calls) == 2 * units * 2


@pytest.mark.slow
def test_train_vae_compile_on_a_machine_without_a_cpp_compiler_trains_as_eager(tmp_path):
    """Inductor's real failure, found only when the first step runs; in its own process, since
    inductor remembers which compiler it found. About 10 s."""
    images = image_folder(tmp_path / "images", n=16)
    args = ["train-vae", "--data", images, "--preset", "tiny", "--steps", 3, "--batch-size", 8,
            "--device", "cpu", "--sample-every", 0, "--threads", 1]
    eager = dalle(*args, "--out", tmp_path / "eager")
    assert eager.returncode == 0, eager.stderr
    env = {"CXX": str(tmp_path / "no-such-g++"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    fallback = dalle(*args, "--out", tmp_path / "fallback", "--compile", env=env)
    assert fallback.returncode == 0, fallback.stderr
    failures = [line for line in fallback.stderr.splitlines() if "torch.compile failed" in line]
    assert len(failures) == 1 and "No working C++ compiler" in failures[0], fallback.stderr
    assert_same_run(tmp_path / "eager", tmp_path / "fallback")


@pytest.mark.slow
def test_a_compiled_tiny_prior_trains_as_the_eager_one_and_its_checkpoint_resumes_eagerly(tmp_path):
    """About a minute: inductor compiles the three kinds of block (row, column, conv)."""
    from dalle.data.codes import CodesDataset
    from dalle.prior import Prior
    from dalle.text import TextTokenizer
    from dalle.train.loop import Trainer
    from dalle.train.prior import PriorLoss, train_prior
    from dalle.train.runs import PriorRun

    data = tmp_path / "data"
    tiny_prior_data(data)
    tokenizer = TextTokenizer.from_pretrained(data / "tokenizer")

    def three_steps(out, compile):
        config = tiny_train_config(steps=6, checkpoint_every=3, compile=compile)
        torch.manual_seed(config.seed)
        trainer = Trainer(Prior(tiny_prior_config(data)), CodesDataset(data / "codes"), config, out,
                          PriorLoss(tokenizer, config.seed), show_progress=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(until=3)
        trainer.close()
        assert not [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
        return trainer.model.state_dict()

    def the_rest_eagerly(out):
        config = tiny_train_config(steps=6, checkpoint_every=3)
        return train_prior(PriorRun(data / "codes", out, tokenizer=data / "tokenizer",
                                    model=tiny_prior_config(data), train=config),
                           resume=True, show_progress=False).state_dict()

    def assert_close(a, b, tolerance):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=tolerance, rtol=10 * tolerance, msg=k)

    eager = three_steps(tmp_path / "eager", compile=False)
    compiled = three_steps(tmp_path / "compiled", compile=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # compiled indeed
    assert_close(eager, compiled, 1e-5)
    saved = load_checkpoint(tmp_path / "compiled" / CHECKPOINT_NAME)["model"]
    assert saved.keys() == eager.keys()  # no `_orig_mod.` names
    assert_close(the_rest_eagerly(tmp_path / "eager"), the_rest_eagerly(tmp_path / "compiled"), 1e-4)
