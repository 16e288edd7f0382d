"""Shared fixtures: which backends to compare against the reference on this machine, and what a
test marked `cuda` does without a usable cuda backend: skip, or fail with UNITSCOPE_REQUIRE_CUDA=1
(a GPU run must not pass by skipping everything), naming the driver and toolkit versions."""
import os

import pytest
import torch

import unitscope
from unitscope import _backend
from unitscope import _tensors as T

CPU_BACKENDS = [b for b in unitscope.backends() if b in ("cpp", "numba")]
HAVE_CUDA = "cuda" in unitscope.backends()
REQUIRE_CUDA = os.environ.get("UNITSCOPE_REQUIRE_CUDA", "") not in ("", "0")


def cuda_unavailable_reason() -> str:
    v = _backend.cuda_versions()
    return (f"needs the cuda backend, which is {unitscope.backends(verbose=True)['cuda']}; "
            f"NVIDIA driver: CUDA {v['driver']}, unitscope._C built with CUDA toolkit {v['toolkit']}")


def pytest_runtest_setup(item):
    if item.get_closest_marker("cuda") is not None and not HAVE_CUDA:  # keywords would match a folder named cuda
        if REQUIRE_CUDA:
            pytest.fail(f"UNITSCOPE_REQUIRE_CUDA=1: {cuda_unavailable_reason()}", pytrace=False)
        pytest.skip(cuda_unavailable_reason())


# the cuda parameter carries the cuda mark, so `pytest -m cuda` runs every backend-parametrized test on it
_CUDA_PARAM = [pytest.param("cuda", marks=pytest.mark.cuda)] if HAVE_CUDA or REQUIRE_CUDA else []


@pytest.fixture(scope="session", params=CPU_BACKENDS + _CUDA_PARAM)
def backend(request):  # session scope: safe to use inside @given tests
    """Every compiled/JIT backend available here (the torch reference is what they are compared to)."""
    return request.param


def device_of(backend: str) -> torch.device:
    """The device a backend's tensors live on: the current CUDA device (with its index) for cuda."""
    return T.resolve_device("cuda" if backend == "cuda" else "cpu")
