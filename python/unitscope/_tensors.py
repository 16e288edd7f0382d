"""Argument checks and buffer hand-off shared by every kernel wrapper.

Inputs may be torch tensors (CPU or CUDA) or NumPy arrays; NumPy arrays are wrapped without a copy.
Checks name the argument and say what they got. Compiled kernels receive raw pointers to contiguous
buffers; a non-contiguous input is made contiguous (the only copy on that path).
"""
from __future__ import annotations

import numpy as np
import torch

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
    """Raw data pointer of a contiguous tensor (0 for None)."""
    if t is None:
        return 0
    assert t.is_contiguous()
    return t.data_ptr()


def cuda_stream(device: torch.device) -> int:
    """The current torch CUDA stream on `device`, as an integer handle for the compiled module."""
    return torch.cuda.current_stream(device).cuda_stream
