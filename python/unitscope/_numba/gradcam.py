"""Grad-CAM reduction in Numba: one parallel task per (image, target) map, like csrc/cpu/gradcam.cpp."""
import numpy as np
from numba import njit, prange

from unitscope._numba.bilinear import bilinear_taps

F32 = np.float32


# All threads' scratch arrays of one call stay under this (csrc/include/unitscope/parallel.h).
SCRATCH_BUDGET = 4 << 30


def gradcam_numba(act, grad, weights, use_grad, relu, out_h, out_w, align_corners, normalize):
    """act/grad float32 (B, K, h, w); weights float32 (B, T, K) -> out float32 (B, T, out_h, out_w).

    Refuses (ValueError) a call whose per-map scratch would exceed SCRATCH_BUDGET, and runs on fewer
    threads when all threads' scratch would: an allocation failing inside a parallel loop is not
    reported cleanly by Numba."""
    import numba

    _, K, h, w = act.shape
    used = min(h, 2 * out_h) if (out_h, out_w) != (h, w) else 0
    per_map = (h * w + K + used * out_w) * 4
    if per_map > SCRATCH_BUDGET:
        raise ValueError(f"gradcam (numba) of {h} x {w} maps to {out_h} x {out_w} needs {per_map >> 20} MiB of "
                         f"scratch memory per map, more than the {SCRATCH_BUDGET >> 30} GiB a call may use; "
                         "use a smaller out_size or smaller maps")
    threads = numba.get_num_threads()
    numba.set_num_threads(max(1, min(threads, SCRATCH_BUDGET // max(per_map, 1))))
    try:
        return _gradcam_maps(act, grad, weights, use_grad, relu, out_h, out_w, align_corners, normalize)
    finally:
        numba.set_num_threads(threads)


@njit(parallel=True, cache=True)
def _gradcam_maps(act, grad, weights, use_grad, relu, out_h, out_w, align_corners, normalize):
    B, K, h, w = act.shape
    T = weights.shape[1]
    resize = not (out_h == h and out_w == w)
    yi0, yi1, yl0, yl1 = bilinear_taps(h, out_h, align_corners)
    xi0, xi1, xl0, xl1 = bilinear_taps(w, out_w, align_corners)
    # only the source rows some output row reads get a row of `rows` (slot), at most min(h, 2 out_h)
    # of them: a 100000 x 1 map resized to 1 x 100000 needs 2, not 100000 x 100000 floats
    slot = np.full(h, -1, np.int64)
    used = np.empty(2 * out_h, np.int64)
    nrows = 0
    for y in range(out_h):
        for r in (yi0[y], yi1[y]):
            if slot[r] < 0:
                slot[r] = nrows
                used[nrows] = r
                nrows += 1
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
            rows = np.empty((nrows, out_w), np.float32)
            for s in range(nrows):
                r = used[s]
                for x in range(out_w):
                    rows[s, x] = F32(F32(xl0[x] * cam[r, xi0[x]]) + F32(xl1[x] * cam[r, xi1[x]]))
            for y in range(out_h):
                s0 = slot[yi0[y]]
                s1 = slot[yi1[y]]
                for x in range(out_w):
                    o[y, x] = F32(F32(yl0[y] * rows[s0, x]) + F32(yl1[y] * rows[s1, x]))
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
