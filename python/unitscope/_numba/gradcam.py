"""Grad-CAM reduction in Numba: one parallel task per (image, target) map, like csrc/cpu/gradcam.cpp."""
import numpy as np
from numba import njit, prange

from unitscope._numba.bilinear import bilinear_taps

F32 = np.float32


@njit(parallel=True, cache=True)
def gradcam_numba(act, grad, weights, use_grad, relu, out_h, out_w, align_corners, normalize):
    """act/grad float32 (B, K, h, w); weights float32 (B, T, K) -> out float32 (B, T, out_h, out_w)."""
    B, K, h, w = act.shape
    T = weights.shape[1]
    resize = not (out_h == h and out_w == w)
    yi0, yi1, yl0, yl1 = bilinear_taps(h, out_h, align_corners)
    xi0, xi1, xl0, xl1 = bilinear_taps(w, out_w, align_corners)
    out = np.empty((B, T, out_h, out_w), np.float32)
    for m in prange(B * T):
        b = m // T
        t = m % T
        wk = np.empty(K, np.float32)
        if use_grad:
            for k in range(K):
                s = F32(0.0)
                for y in range(h):
                    for x in range(w):
                        s += grad[b, k, y, x]
                wk[k] = s / F32(h * w)
        else:
            wk[:] = weights[b, t]
        cam = np.zeros((h, w), np.float32)
        for k in range(K):
            c = wk[k]  # no skip for c == 0: 0 * NaN is NaN (the NaN policy)
            for y in range(h):
                for x in range(w):
                    cam[y, x] += c * act[b, k, y, x]
        if relu:
            for y in range(h):
                for x in range(w):
                    if cam[y, x] < 0.0:
                        cam[y, x] = 0.0
        o = out[b, t]
        if resize:
            # separable, same arithmetic order as bilinear_combine (see csrc/cpu/gradcam.cpp)
            rows = np.empty((h, out_w), np.float32)
            for r in range(h):
                for x in range(out_w):
                    rows[r, x] = F32(F32(xl0[x] * cam[r, xi0[x]]) + F32(xl1[x] * cam[r, xi1[x]]))
            for y in range(out_h):
                for x in range(out_w):
                    o[y, x] = F32(F32(yl0[y] * rows[yi0[y], x]) + F32(yl1[y] * rows[yi1[y], x]))
        else:
            o[:, :] = cam
        if normalize:
            lo = F32(np.inf)
            hi = F32(-np.inf)
            for y in range(out_h):
                for x in range(out_w):  # min and max of the non-NaN pixels (NaN fails both tests)
                    if o[y, x] < lo:
                        lo = o[y, x]
                    if o[y, x] > hi:
                        hi = o[y, x]
            rng = F32(hi - lo)
            ok = rng > 0.0 and np.isfinite(rng)
            for y in range(out_h):
                for x in range(out_w):  # a NaN pixel stays NaN; a constant map becomes 0
                    v = o[y, x]
                    o[y, x] = F32(F32(v - lo) / rng) if ok else (v if np.isnan(v) else F32(0.0))
    return out
