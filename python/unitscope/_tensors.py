"""Argument checks and buffer hand-off shared by every kernel wrapper.

Inputs may be torch tensors (CPU or CUDA) or NumPy arrays; NumPy arrays are wrapped without a copy.
Checks name the argument and say what they got. Compiled kernels receive raw pointers to contiguous
buffers; a non-contiguous input is made contiguous (the only copy on that path).
"""
from __future__ import annotations

import numpy as np
import torch

# the types of the public kernel API's arguments (annotations only)
ArrayLike = torch.Tensor | np.ndarray
DeviceLike = str | torch.device | None
Size2D = int | tuple[int, int]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

# dtype codes understood by csrc/include/unitscope/common.h
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


def as_tensor(x, name: str) -> tuple[torch.Tensor, bool]:
    """(tensor, came_from_numpy). Raises TypeError for anything else."""
    if isinstance(x, torch.Tensor):
        return x, False
    if isinstance(x, np.ndarray):
        if x.dtype.byteorder not in ("=", "|", "<" if np.little_endian else ">"):
            raise TypeError(f"{name} must be a native-byte-order array, got dtype {x.dtype}")
        return torch.from_numpy(x if x.flags.writeable else x.copy()), True
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def check_ndim(t: torch.Tensor, ndim: int, name: str, layout: str) -> None:
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions {layout}, got shape {tuple(t.shape)}")


def check_shape(t: torch.Tensor, shape: tuple, name: str, layout: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {layout} = {tuple(shape)}, got {tuple(t.shape)}")


def check_float(t: torch.Tensor, name: str, allowed=FLOAT_DTYPES) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} must be a floating tensor ({names}), got {str(t.dtype).replace('torch.', '')}")


def check_int(t: torch.Tensor, name: str, allowed=INT_DTYPES) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} must be an integer tensor ({names}), got {str(t.dtype).replace('torch.', '')}")


def check_same_device(ref: torch.Tensor, ref_name: str, t: torch.Tensor, name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the same device as {ref_name} ({ref.device}), got {t.device}")


def size_2d(value, name: str) -> tuple[int, int]:
    """An (H, W) size from an int or a pair of positive ints."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    try:
        h, w = value
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair (H, W), got {value!r}") from None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (h, w)) or h < 1 or w < 1:
        raise ValueError(f"{name} must be positive integers (H, W), got {value!r}")
    return int(h), int(w)


def ptr(t: torch.Tensor | None) -> int:
    """Raw data pointer of a contiguous tensor (0 for None). A tensor without real storage (a
    FakeTensor or a meta tensor, what torch.compile and torch.export trace with) is refused: no
    pointer that is not backed by memory may reach the compiled kernels."""
    if t is None:
        return 0
    assert t.is_contiguous()
    if t.device.type == "meta" or (t.numel() > 0 and t.untyped_storage().data_ptr() == 0):
        raise ValueError(f"a {tuple(t.shape)} tensor without data (a FakeTensor or meta tensor) cannot reach a "
                         "compiled kernel; call the kernel on real tensors (torch.ops.unitscope.* trace on their own)")
    return t.data_ptr()


def resolve_device(device, name: str = "device") -> torch.device:
    """`device` as a torch.device with an explicit index for CUDA: a bare "cuda" means the current
    device, torch.cuda.current_device(), when it is resolved. Every kernel front end resolves its
    device once, when it is built, so that "cuda" and the "cuda:0" of the tensors it receives compare
    equal (torch.device("cuda") != torch.device("cuda:0")). Without a usable CUDA, "cuda" stays as
    it is, and the backend choice or torch says why it cannot be used.

    Raises ValueError naming `name` for anything torch.device does not accept."""
    try:
        d = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name} must be a torch.device or a string such as 'cpu', 'cuda' or 'cuda:1', "
                         f"got {device!r}") from None
    if d.type == "cuda" and d.index is None and torch.cuda.is_available():
        d = torch.device("cuda", torch.cuda.current_device())
    return d


def state_device(device, backend) -> torch.device:
    """Where a stateful kernel (IoUTally, ExactQuantile, QuantileSketch) keeps its state: `device`
    resolved, by default the current CUDA device for backend="cuda" and the CPU otherwise."""
    return resolve_device(device if device is not None else ("cuda" if backend == "cuda" else "cpu"))


def cuda_launch(t: torch.Tensor) -> tuple[int, int]:
    """(device index, stream handle) for a CUDA kernel over CUDA tensor `t`: the tensor's own device
    and that device's current torch stream. The compiled entry points select the device, launch on
    the stream and restore the caller's device (csrc/include/unitscope/cuda_check.h, DeviceGuard)."""
    return t.device.index, torch.cuda.current_stream(t.device).cuda_stream
