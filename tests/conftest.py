"""Shared fixtures: which backends to compare against the reference on this machine."""
import pytest
import torch

import unitscope

CPU_BACKENDS = [b for b in unitscope.backends() if b in ("cpp", "numba")]
HAVE_CUDA = "cuda" in unitscope.backends()


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device and a CUDA build of unitscope")
    for item in items:
        if "cuda" in item.keywords and not HAVE_CUDA:
            item.add_marker(skip_cuda)


@pytest.fixture(scope="session", params=CPU_BACKENDS + (["cuda"] if HAVE_CUDA else []))
def backend(request):  # session scope: safe to use inside @given tests
    """Every compiled/JIT backend available here (the torch reference is what they are compared to)."""
    return request.param


def device_of(backend: str) -> torch.device:
    return torch.device("cuda" if backend == "cuda" else "cpu")
