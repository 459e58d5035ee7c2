import os

import pytest
import torch

# Tests run on 2 cores, one pytest-xdist worker per core (pyproject's addopts), beside the `dalle`
# processes some of them start: each worker keeps torch to its share of the cores, at most 2.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS",
                                         max(1, min(2, (os.cpu_count() or 1) // WORKERS)))))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow; run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
