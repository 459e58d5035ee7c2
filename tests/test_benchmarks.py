"""The benchmark helpers: `measure`, the analytic FLOP count of the prior, and a quick run."""

import dataclasses
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
