"""Shared test settings: GPU tests skip with a reason where no CUDA device exists."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is visible on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models are all overhead: one thread avoids OpenMP waits on a busy shared CPU.
    Module-scoped so that module-scoped fixtures (a shared training run) can use it too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
