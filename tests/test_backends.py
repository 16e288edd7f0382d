"""Backend discovery and selection (docs/design.md, "Backend contract")."""
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
    for text in status.values():
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


# ---- devices: a bare "cuda" is the current device, resolved once (checked here with fakes)


def test_resolve_device_gives_cuda_its_current_index(monkeypatch):
    from unitscope import _tensors as T

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert T.resolve_device("cuda") == torch.device("cuda", 3)
    assert T.resolve_device(torch.device("cuda")) == torch.device("cuda:3")
    assert T.resolve_device("cuda:1") == torch.device("cuda:1")  # an explicit index is kept
    assert T.resolve_device("cpu") == torch.device("cpu")
    assert T.state_device(None, "cuda") == torch.device("cuda:3")
    assert T.state_device(None, "cpp") == T.state_device(None, None) == torch.device("cpu")
    assert T.state_device("cuda", None) == torch.device("cuda:3")
    # the bug this prevents: torch.device("cuda") never equals a tensor's torch.device("cuda:0")
    assert torch.device("cuda") != torch.device("cuda:0")


def test_resolve_device_without_cuda_leaves_cuda_for_the_backend_check(monkeypatch):
    from unitscope import _tensors as T

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: pytest.fail("must not ask for the current device"))
    assert T.resolve_device("cuda") == torch.device("cuda")
    if "cuda" not in unitscope.backends():
        with pytest.raises(RuntimeError, match="IoUTally: backend 'cuda' is not available: "):
            unitscope.IoUTally(2, 3, label_category=torch.zeros(3, dtype=torch.int64), num_categories=1,
                               out_size=4, backend="cuda")
        with pytest.raises(RuntimeError, match="ExactQuantile: backend 'cuda' is not available: "):
            unitscope.ExactQuantile(2, 0.5, 10, backend="cuda")


def test_resolve_device_rejects_nonsense():
    from unitscope import _tensors as T

    with pytest.raises(ValueError, match=r"device must be a torch.device or a string .* got 'gpu'"):
        T.resolve_device("gpu")
    with pytest.raises(ValueError, match=r"device must be .* got 3.5"):
        unitscope.QuantileSketch(2, device=3.5)


def test_cuda_launch_uses_the_tensors_device_and_its_stream(monkeypatch):
    from types import SimpleNamespace

    from unitscope import _tensors as T

    asked = []

    def current_stream(device):
        asked.append(device)
        return SimpleNamespace(cuda_stream=0xABC0 + device.index)

    monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
    t = SimpleNamespace(device=torch.device("cuda", 1))  # a tensor on cuda:1, whatever device is current
    assert T.cuda_launch(t) == (1, 0xABC1)
    assert asked == [torch.device("cuda", 1)]


# ---- why cuda is not available: "no CUDA device" versus a driver older than the toolkit


def _probe(**kw):
    p = dict(count=0, error=0, error_name="", error_string="", driver_version=13000, runtime_version=13000,
             toolkit_version=13000)
    p.update(kw)
    return p


def test_describe_cuda_probe():
    d = _backend.describe_cuda_probe
    assert d(_probe(count=1)) == ""
    # no libcuda at all: the runtime says cudaErrorInsufficientDriver, the driver version is 0
    assert d(_probe(error=35, error_name="cudaErrorInsufficientDriver", driver_version=0)) == \
        "no CUDA device (no NVIDIA driver is installed)"
    no_gpu = d(_probe(error=100, error_name="cudaErrorNoDevice", error_string="no CUDA-capable device is detected"))
    assert no_gpu.startswith("no CUDA device") and "13.0" in no_gpu
    assert d(_probe()).startswith("no CUDA device")  # count 0 and no error
    old = d(_probe(error=35, error_name="cudaErrorInsufficientDriver", driver_version=12040))
    assert "driver supports CUDA up to 12.4" in old and "toolkit unitscope was built with (13.0)" in old
    assert "no CUDA device" not in old
    other = d(_probe(error=999, error_name="cudaErrorUnknown", error_string="unknown error", driver_version=12080,
                     toolkit_version=12090))
    assert "cudaErrorUnknown: unknown error" in other and "12.8" in other and "12.9" in other


class _FakeModule:
    def __init__(self, probe, compiled=True):
        self.probe, self.compiled = probe, compiled

    def cuda_compiled(self):
        return self.compiled

    def cuda_probe(self):
        return self.probe


@pytest.fixture
def fake_compiled(monkeypatch):
    """Install a fake unitscope._C; the caches are cleared before and after."""
    caches = (_backend._compiled, _backend._cuda_probe, _backend._cuda_status)

    def install(module):
        for c in caches:
            c.cache_clear()
        monkeypatch.setattr(_backend, "_compiled", lambda: (module, ""))

    yield install
    monkeypatch.undo()
    for c in caches:
        c.cache_clear()


def test_backends_verbose_reads_the_probe(fake_compiled, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fake_compiled(_FakeModule(_probe(error=35, error_name="cudaErrorInsufficientDriver", driver_version=0)))
    assert unitscope.backends(verbose=True)["cuda"] == "not available (no CUDA device (no NVIDIA driver is installed))"
    assert _backend.cuda_versions() == {"driver": "none", "toolkit": "13.0"}
    fake_compiled(_FakeModule(_probe(error=35, error_name="cudaErrorInsufficientDriver", driver_version=12020)))
    status = unitscope.backends(verbose=True)["cuda"]
    assert "12.2" in status and "13.0" in status and "cuda" not in unitscope.backends()
    assert _backend.cuda_versions() == {"driver": "12.2", "toolkit": "13.0"}
    fake_compiled(_FakeModule(_probe(count=2)))
    assert "torch cannot see a CUDA device" in unitscope.backends(verbose=True)["cuda"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _backend._cuda_status.cache_clear()
    assert "cuda" in unitscope.backends()
    fake_compiled(_FakeModule(None, compiled=False))
    assert "built without CUDA" in unitscope.backends(verbose=True)["cuda"]
    assert _backend.cuda_versions()["toolkit"] == "none"


def test_this_machine_names_a_missing_gpu_plainly():
    if "cuda" in unitscope.backends() or not unitscope.cuda_compiled():
        pytest.skip("needs a CUDA build on a machine without a usable GPU")
    probe = _backend._cuda_probe()
    status = unitscope.backends(verbose=True)["cuda"]
    if probe["driver_version"] == 0 or probe["error_name"] == "cudaErrorNoDevice":
        assert status.startswith("not available (no CUDA device")
    assert "insufficient" not in status


def test_require_cuda_turns_skips_into_failures_naming_versions(tmp_path):
    if "cuda" in unitscope.backends():
        pytest.skip("the cuda backend is available here: nothing to fail")
    root = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, UNITSCOPE_REQUIRE_CUDA="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "-k", "bare_cuda",
           os.path.join(root, "kernels", "test_cuda.py")]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode != 0, out.stdout
    text = out.stdout + out.stderr
    assert "UNITSCOPE_REQUIRE_CUDA=1: needs the cuda backend" in text
    v = _backend.cuda_versions()
    assert f"NVIDIA driver: CUDA {v['driver']}" in text and f"CUDA toolkit {v['toolkit']}" in text
    assert " passed" not in text and " skipped" not in text
