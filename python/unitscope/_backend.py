"""Which kernel backends exist here, and which one serves a call.

Backends: "cuda" (compiled with CUDA and a device present), "cpp" (compiled CPU kernels), "numba",
"torch" (the reference, always). A call picks one by its input's device unless `backend=` or the
environment variable UNITSCOPE_BACKEND names one; a named backend that cannot serve raises with the
reason, it never falls back to another. UNITSCOPE_NO_EXTENSION=1 hides the compiled module (CI uses
it to test the Numba fallback on its own).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import types

import numpy as np
import torch

ALL_BACKENDS = ("cuda", "cpp", "numba", "torch")


@functools.cache
def _compiled():
    """(module or None, reason it is missing)."""
    if os.environ.get("UNITSCOPE_NO_EXTENSION", "") not in ("", "0"):
        return None, "disabled by UNITSCOPE_NO_EXTENSION"
    try:
        import torch  # noqa: F401  (its OpenMP runtime is the one the module binds to)

        from unitscope import _openmp

        _openmp.make_global()
        return importlib.import_module("unitscope._C"), ""
    except ImportError as e:  # a source checkout without a build, or a broken build
        return None, f"compiled module unitscope._C not importable ({e}); reinstall with 'pip install .'"


def compiled_module() -> types.ModuleType:
    """The unitscope._C module, or raise RuntimeError saying why it is missing."""
    mod, why = _compiled()
    if mod is None:
        raise RuntimeError(why)
    return mod


def cuda_compiled() -> bool:
    """True when unitscope._C was built with the CUDA kernels."""
    mod, _ = _compiled()
    return bool(mod is not None and mod.cuda_compiled())


@functools.cache
def _numba_status() -> str:
    """'' when numba is installed. Found without importing it (numba brings scipy and ~1 s of imports);
    it is imported when a kernel first runs on it."""
    if "numba" in sys.modules:
        return ""
    try:
        spec = importlib.util.find_spec("numba")
    except (ImportError, ValueError) as e:
        return f"numba not importable ({e}); pip install numba"
    return "" if spec is not None else "numba not installed; pip install numba"


def _cuda_version(v: int) -> str:
    """CUDA's 1000*major + 10*minor as 'major.minor'."""
    return f"{v // 1000}.{v % 1000 // 10}"


@functools.cache
def _cuda_probe() -> dict | None:
    """unitscope._C.cuda_probe() (csrc/include/unitscope/cuda_probe.h), None without a CUDA build."""
    mod, _ = _compiled()
    return mod.cuda_probe() if mod is not None and mod.cuda_compiled() else None


def cuda_versions() -> dict:
    """{'driver': ..., 'toolkit': ...}: the newest CUDA the installed NVIDIA driver supports
    (cudaDriverGetVersion; 'none' without a driver) and the CUDA toolkit unitscope._C was compiled
    with (CUDART_VERSION; 'none' for a build without CUDA), as 'major.minor' strings."""
    p = _cuda_probe()
    if p is None:
        return {"driver": "unknown (unitscope._C has no CUDA)", "toolkit": "none"}
    return {"driver": _cuda_version(p["driver_version"]) if p["driver_version"] else "none",
            "toolkit": _cuda_version(p["toolkit_version"])}


def describe_cuda_probe(p: dict) -> str:
    """'' when the probe saw a device, else why not, in words: no driver or no GPU is "no CUDA
    device"; a driver older than the toolkit names both versions."""
    if p["count"] > 0:
        return ""
    driver, toolkit = p["driver_version"], p["toolkit_version"]
    if driver == 0:  # the runtime reports a missing libcuda as cudaErrorInsufficientDriver
        return "no CUDA device (no NVIDIA driver is installed)"
    if p["error_name"] == "cudaErrorNoDevice" or not p["error"]:
        return f"no CUDA device (the NVIDIA driver, CUDA {_cuda_version(driver)}, sees no GPU)"
    if p["error_name"] == "cudaErrorInsufficientDriver":
        return (f"the NVIDIA driver supports CUDA up to {_cuda_version(driver)}, older than the CUDA toolkit "
                f"unitscope was built with ({_cuda_version(toolkit)}): update the driver, or rebuild unitscope "
                f"with a CUDA toolkit <= {_cuda_version(driver)}")
    return (f"CUDA error {p['error_name']}: {p['error_string']} (driver supports CUDA {_cuda_version(driver)}, "
            f"unitscope built with CUDA toolkit {_cuda_version(toolkit)})")


@functools.cache
def _cuda_status() -> str:
    mod, why = _compiled()
    if mod is None:
        return why
    if not mod.cuda_compiled():
        return "unitscope._C was built without CUDA (no nvcc at build time; rebuild with UNITSCOPE_CUDA=ON)"
    why = describe_cuda_probe(_cuda_probe())
    if why:
        return why
    if not torch.cuda.is_available():
        return "torch cannot see a CUDA device (a CPU-only torch build?)"
    return ""


def _status(name: str) -> str:
    """'' when the backend is available, else why not."""
    if name == "torch":
        return ""
    if name == "numba":
        return _numba_status()
    if name == "cpp":
        return _compiled()[1]
    if name == "cuda":
        return _cuda_status()
    raise ValueError(f"backend must be one of {ALL_BACKENDS}, got {name!r}")


def backends(verbose: bool = False) -> list[str] | dict[str, str]:
    """The available backends, best first: e.g. ['cpp', 'numba', 'torch'].

    With verbose=True, a dict of every backend to 'available' or 'not available (why)'.
    """
    if verbose:
        return {n: ("available" if not _status(n) else f"not available ({_status(n)})") for n in ALL_BACKENDS}
    return [n for n in ALL_BACKENDS if not _status(n)]


def select_backend(backend: str | None, device: torch.device, op: str) -> str:
    """The backend that serves a call of `op` on tensors on `device`.

    Explicit choice (argument, then UNITSCOPE_BACKEND) must be able to serve the device; the
    automatic choice is cuda > torch on a GPU and cpp > numba > torch on the CPU.
    """
    requested = backend if backend is not None else (os.environ.get("UNITSCOPE_BACKEND") or None)
    on_cuda = device.type == "cuda"
    if requested is not None:
        if requested not in ALL_BACKENDS:
            raise ValueError(f"backend must be one of {ALL_BACKENDS} or None, got {requested!r}")
        why = _status(requested)
        if why:
            raise RuntimeError(f"{op}: backend {requested!r} is not available: {why}")
        if requested == "cuda" and not on_cuda:
            raise ValueError(f"{op}: backend 'cuda' needs CUDA tensors, got tensors on {device}")
        if requested in ("cpp", "numba") and device.type != "cpu":
            raise ValueError(f"{op}: backend {requested!r} runs on the CPU, got tensors on {device}")
        return requested
    order = ("cuda", "torch") if on_cuda else ("cpp", "numba", "torch")
    if device.type not in ("cpu", "cuda"):
        order = ("torch",)
    for name in order:
        if not _status(name):
            return name
    return "torch"


@functools.cache
def max_threads() -> int:
    """The largest num_threads a kernel accepts: max(64, 4 x the machine's cores) (cached: os.cpu_count()
    reads /sys on every call, ~2 us, and every kernel call asks)."""
    return max(64, 4 * (os.cpu_count() or 1))


def num_threads(explicit: int | None = None) -> int:
    """Threads for a CPU kernel: an explicit count in [1, max_threads()], else torch.get_num_threads()
    (capped the same way). Raises TypeError for a non-integer, ValueError outside the range."""
    if explicit is not None:
        if isinstance(explicit, bool) or not isinstance(explicit, (int, np.integer)):
            raise TypeError(f"num_threads must be an int or None, got {type(explicit).__name__} {explicit!r}")
        if not 1 <= int(explicit) <= max_threads():
            raise ValueError(f"num_threads must be in [1, {max_threads()}] (max(64, 4 x the {os.cpu_count()} "
                             f"cores)), got {int(explicit)}")
        return int(explicit)
    return max(1, min(torch.get_num_threads(), max_threads()))


def set_numba_threads(explicit: int | None = None) -> None:
    """Give Numba's parallel loops the same thread count as the other CPU backends."""
    import numba

    numba.set_num_threads(min(num_threads(explicit), numba.config.NUMBA_NUM_THREADS))
