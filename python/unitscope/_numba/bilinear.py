"""Bilinear taps for the Numba kernels: the same float32 arithmetic as csrc/include/unitscope/bilinear.h."""
import numpy as np
from numba import njit

F32 = np.float32


@njit(cache=True)
def bilinear_scale(in_size, out_size, align_corners):
    if align_corners:
        return F32(in_size - 1) / F32(out_size - 1) if out_size > 1 else F32(0.0)
    return F32(in_size) / F32(out_size)


@njit(cache=True)
def bilinear_taps(in_size, out_size, align_corners):
    """(i0, i1 int64[out], l0, l1 float32[out])."""
    scale = bilinear_scale(in_size, out_size, align_corners)
    i0 = np.empty(out_size, np.int64)
    i1 = np.empty(out_size, np.int64)
    l0 = np.empty(out_size, np.float32)
    l1 = np.empty(out_size, np.float32)
    for d in range(out_size):
        if align_corners:
            src = F32(scale * F32(d))
        else:
            src = F32(F32(scale * F32(F32(d) + F32(0.5))) - F32(0.5))
            if src < F32(0.0):
                src = F32(0.0)
        i = min(np.int64(src), in_size - 1)
        lam = F32(src - F32(i))
        lam = min(max(lam, F32(0.0)), F32(1.0))
        i0[d] = i
        i1[d] = i + 1 if i < in_size - 1 else i
        l1[d] = lam
        l0[d] = F32(F32(1.0) - lam)
    return i0, i1, l0, l1


@njit(cache=True, inline="always")
def bilinear_combine(ly0, ly1, lx0, lx1, v00, v01, v10, v11):
    r0 = F32(F32(lx0 * v00) + F32(lx1 * v01))
    r1 = F32(F32(lx0 * v10) + F32(lx1 * v11))
    return F32(F32(ly0 * r0) + F32(ly1 * r1))
