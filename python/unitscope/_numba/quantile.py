"""Numba kernels for ExactQuantile (candidate buffer with a reject threshold) and QuantileSketch
(float-key histogram with a fine window under the max), one parallel task per channel, mirroring
csrc/cpu/quantile.cpp. State arrays are the wrapper's tensors viewed as NumPy arrays, updated in place.
"""
import numpy as np
from numba import njit, prange

COARSE = 512   # one bucket per (sign, float32 exponent) of the order-preserving key
SUB = 128      # fine buckets per coarse bucket (top 7 mantissa bits)


@njit(cache=True)
def _exact_push(v, buf, k, fill, thr, nan, m):
    if v != v:
        nan[k] += 1
        return
    if not (v <= thr[k]):  # thr NaN: no threshold yet, accept everything
        f = fill[k]
        buf[k, f] = v if v != 0 else 0.0  # -0.0 kept as +0.0, as by every backend (reference.quantile.positive_zero)
        f += 1
        if f == buf.shape[1]:
            part = np.partition(buf[k, :f], f - m)  # the m largest end up at f-m .. f-1
            buf[k, :m] = part[f - m:]
            thr[k] = part[f - m]
            f = m
        fill[k] = f


def _check_state_size(name, values, lo, hi):
    """The kernels index the state with these values: never trust one the caller's state holds."""
    bad = np.nonzero((values < lo) | (values > hi))[0]
    if len(bad):
        raise ValueError(f"{name}[{bad[0]}] = {values[bad[0]]} is outside [{lo}, {hi}]")


def exact_update(x, buf, fill, thr, nan, m, negate):
    """x float32 (outer, K, inner); buf float32 (K, cap); fill/nan int64 (K,); thr float32 (K,).
    Raises ValueError (nothing changed) unless 0 <= fill < cap and the shapes agree."""
    K, cap = buf.shape
    if x.shape[1] != K or fill.shape != (K,) or thr.shape != (K,) or nan.shape != (K,) or not 1 <= m < cap:
        raise ValueError(f"exact_update: inconsistent sizes x {x.shape}, buf {buf.shape}, m {m}")
    _check_state_size("exact_quantile: fill", fill, 0, cap - 1)
    _exact_update(x, buf, fill, thr, nan, m, negate)


@njit(parallel=True, cache=True)
def _exact_update(x, buf, fill, thr, nan, m, negate):
    outer, K, inner = x.shape
    for k in prange(K):
        for o in range(outer):
            row = x[o, k]
            i = 0
            while i + 16 <= inner:
                t = thr[k]
                hit = False
                for j in range(16):
                    v = -row[i + j] if negate else row[i + j]
                    if not (v <= t):
                        hit = True
                if hit:  # push only the values above the (possibly risen) threshold, and NaN
                    for j in range(16):
                        v = -row[i + j] if negate else row[i + j]
                        if not (v <= thr[k]):
                            _exact_push(v, buf, k, fill, thr, nan, m)
                i += 16
            while i < inner:
                _exact_push(-row[i] if negate else row[i], buf, k, fill, thr, nan, m)
                i += 1


@njit(cache=True)
def _shift(k, c, top, coarse, fine, nb):
    """Move channel k's fine window up so that coarse bucket c is its top; fold what drops out."""
    old = top[k]
    if old >= 0:
        d = c - old
        base = old - nb + 1
        for j in range(min(d, nb)):
            if base + j >= 1:
                s = 0
                for i in range(SUB):
                    s += fine[k, j * SUB + i]
                coarse[k, base + j] += s
        for j in range(nb):
            for i in range(SUB):
                fine[k, j * SUB + i] = fine[k, (j + d) * SUB + i] if j + d < nb else 0
    top[k] = c


def sketch_update(bits, coarse, fine, top, zeros, nan, kmin, kmax, nb):
    """bits uint32 (outer, K, inner): float32 bit patterns. coarse int64 (K, 512); fine int64 (K, nb*128);
    top int64 (K,) (-1 when empty); zeros/nan int64 (K,); kmin/kmax int64 (K,) order-preserving keys.
    Raises ValueError (nothing changed) unless -1 <= top <= 510 and the shapes agree."""
    K = bits.shape[1]
    if (coarse.shape != (K, COARSE) or not 1 <= nb < COARSE or fine.shape != (K, nb * SUB)
            or any(a.shape != (K,) for a in (top, zeros, nan, kmin, kmax))):
        raise ValueError(f"sketch_update: inconsistent sizes bits {bits.shape}, coarse {coarse.shape}, "
                         f"fine {fine.shape}, nb {nb}")
    _check_state_size("quantile_sketch: top", top, -1, COARSE - 2)
    _sketch_update(bits, coarse, fine, top, zeros, nan, kmin, kmax, nb)


@njit(parallel=True, cache=True)
def _sketch_update(bits, coarse, fine, top, zeros, nan, kmin, kmax, nb):
    outer, K, inner = bits.shape
    for k in prange(K):
        lo_k = kmin[k]
        hi_k = kmax[k]
        for o in range(outer):
            row = bits[o, k]
            for i in range(inner):
                u = np.int64(row[i])
                mag = u & 0x7FFFFFFF
                if mag > 0x7F800000:
                    nan[k] += 1
                    continue
                if mag == 0:
                    zeros[k] += 1
                    continue
                key = (0x7FFFFFFF - mag) if (u >> 31) else (0x80000000 + mag)
                if key < lo_k:
                    lo_k = key
                if key > hi_k:
                    hi_k = key
                c = key >> 23
                if c == 0 or c == COARSE - 1:
                    coarse[k, c] += 1
                    continue
                if c > top[k]:
                    _shift(k, c, top, coarse, fine, nb)
                base = top[k] - nb + 1
                if c >= base:
                    fine[k, (c - base) * SUB + ((key >> 16) & (SUB - 1))] += 1
                else:
                    coarse[k, c] += 1
        kmin[k] = lo_k
        kmax[k] = hi_k
