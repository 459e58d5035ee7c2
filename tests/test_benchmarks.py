"""The benchmark helpers: `measure`, the analytic FLOP count of the prior, a quick run, and the
side by side with dalle-pytorch (where it is installed)."""

import dataclasses
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dalle.config import PriorConfig
from dalle.prior import Prior

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from common import measure, random_batch  # noqa: E402
from flops import counted_forward_flops, prior_forward_flops  # noqa: E402
from peer import missing_peer, peer_section, run_worker  # noqa: E402

needs_peer = pytest.mark.skipif(missing_peer() is not None, reason=f"{missing_peer()} (benchmarks/requirements-peer.txt)")


def test_measure_runs_warmup_then_repeats_and_orders_its_figures():
    calls = []
    timing = measure(lambda: calls.append(sum(range(10_000))), repeats=5, warmup=2)
    assert len(calls) == 7
    assert 0 < timing.min <= timing.median <= timing.max
    rate = timing.rate(100)
    assert rate.min <= rate.median <= rate.max


@pytest.mark.parametrize("layout", ["sparse", "dense", "row", "column", "conv"])
def test_analytic_flops_match_flop_counter_mode(layout):
    # A 10x10 grid makes two blocks of 70 image queries, the last padded: every case of the plan.
    config = dataclasses.replace(PriorConfig.tiny(), grid_size=10, layout=layout)
    torch.manual_seed(0)
    model = Prior(config)
    counted = counted_forward_flops(model, *random_batch(config, 2, torch.device("cpu")))
    executed = sum(prior_forward_flops(config, 2, executed=True).values())
    useful = sum(prior_forward_flops(config, 2).values())
    assert executed == pytest.approx(counted, rel=0.02)
    assert useful <= executed


def test_quick_run_prints_a_markdown_table():
    out = subprocess.run([sys.executable, str(BENCHMARKS / "run.py"), "--quick", "--only", "clip",
                          "--threads", "1", "--device", "cpu"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "- device: cpu" in out
    assert "### CLIP scoring" in out
    assert "| 64 | fp32 |" in out


def test_the_peer_section_is_one_line_on_how_to_install_it_where_the_peer_is_missing(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr("peer.version", not_installed)
    text, results = peer_section(torch.device("cpu"), repeats=1)
    assert results == {}
    assert text.splitlines()[-1] == ("Skipped: dalle-pytorch is not installed; install the peer with "
                                     "`.venv/bin/pip install --no-deps -r benchmarks/requirements-peer.txt`.")


@pytest.mark.slow  # 11 s: the peer's whole-size prior samples 8 grids, twice
@needs_peer
def test_a_peer_worker_reports_its_rate_and_parameters():
    timing, parameters = run_worker("peer", "sample-fp32-cache", torch.device("cpu"), repeats=1)
    assert timing.median > 0
    assert parameters > 9_000_000  # its GEGLU MLP and one head over text and image ids


SAMPLE_WITH_AND_WITHOUT_CACHE = """
import dataclasses, torch
from peer import peer_model
from dalle.config import PriorConfig
config = dataclasses.replace(PriorConfig.tiny(), head_dim=32)
model = peer_model(config, torch.device("cpu"), cached=True)
lengths = []
model.transformer.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
text = torch.randint(1, 30, (3, config.text_length))
codes = []
for use_cache in (True, False):
    torch.manual_seed(1)
    codes.append(model.generate_images(text, use_cache=use_cache))
print(torch.equal(*codes), lengths[:3])
"""


@needs_peer
def test_the_peers_forced_cache_feeds_one_token_a_step_and_samples_the_codes_it_samples_without():
    # In a process of its own: the peer's import leaves stand-in modules in sys.modules.
    out = subprocess.run([sys.executable, "-c", SAMPLE_WITH_AND_WITHOUT_CACHE], cwd=BENCHMARKS,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.split() == ["True", "[7,", "1,", "1]"]  # the text and <bos> prefill, then one token
