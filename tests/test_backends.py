"""Backend discovery and selection (DESIGN.md, Backends)."""
import os
import subprocess
import sys

import pytest
import torch

import unitscope
from unitscope import _backend


def test_cpu_backends_present():
    names = unitscope.backends()
    assert names[-1] == "torch"
    if os.environ.get("UNITSCOPE_NO_EXTENSION"):
        assert "cpp" not in names and "numba" in names
    else:
        assert "cpp" in names and "numba" in names


def test_verbose_gives_reasons():
    status = unitscope.backends(verbose=True)
    assert set(status) == {"cuda", "cpp", "numba", "torch"}
    for name, text in status.items():
        assert text == "available" or text.startswith("not available (")
    if not torch.cuda.is_available():
        assert status["cuda"].startswith("not available (")


def test_automatic_choice_on_cpu():
    want = "cpp" if "cpp" in unitscope.backends() else "numba"
    assert _backend.select_backend(None, torch.device("cpu"), "op") == want


def test_cpp_refuses_cuda_tensors_instead_of_falling_back():
    if "cpp" not in unitscope.backends():
        pytest.skip("compiled module disabled in this run")
    with pytest.raises(ValueError, match="backend 'cpp' runs on the CPU, got tensors on cuda"):
        _backend.select_backend("cpp", torch.device("cuda"), "op")


def test_unavailable_backend_raises_with_reason():
    if "cuda" in unitscope.backends():
        pytest.skip("CUDA is available here")
    with pytest.raises(RuntimeError, match=r"backend 'cuda' is not available: .+"):
        _backend.select_backend("cuda", torch.device("cuda"), "op")


def test_extension_can_be_disabled():
    code = "import unitscope; print(unitscope.backends())"
    env = dict(os.environ, UNITSCOPE_NO_EXTENSION="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "cpp" not in out.stdout and "numba" in out.stdout


def test_cuda_compiled_is_a_bool():
    assert isinstance(unitscope.cuda_compiled(), bool)


def test_cli_info_runs():
    from unitscope.cli import main

    assert main(["info"]) == 0
