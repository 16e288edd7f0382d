"""QuantileSketch in plain PyTorch: the float-key histogram's update (the definition every backend's
state must equal bitwise), and the queries, merge and shift every backend shares.

State per channel (all int64): coarse (512,) bucket counts by (sign, float32 exponent); fine (nb*128,)
counts of the top nb coarse buckets under the largest finite value, 128 sub-buckets each (the next 7
mantissa bits); top (coarse bucket of the largest finite value, -1 when empty); zeros; nan; kmin/kmax
(smallest/largest order-preserving key). Coarse bucket c lives in `fine` iff top-nb+1 <= c <= top and
0 < c < 511 (c = 0 holds only -inf, 511 only +inf); otherwise in `coarse`. The state is a function of
the multiset of values only, so order, batching and merging never change it.
"""
from __future__ import annotations

import math

import torch

COARSE, SUB = 512, 128
EMPTY_KMIN, EMPTY_KMAX = 1 << 32, -1
FLT_MAX = 3.4028234663852886e38


def keys(vals: torch.Tensor):
    """float32 tensor -> (key int64, is_nan, is_zero). key is order-preserving (see quantile.h)."""
    bits = vals.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    mag = bits & 0x7FFFFFFF
    key = torch.where((bits >> 31) == 1, 0x7FFFFFFF - mag, 0x80000000 + mag)
    return key, mag > 0x7F800000, mag == 0


def key_value(key: torch.Tensor) -> torch.Tensor:
    """int64 key (0 .. 2^32) -> float64 value of that key (the lower edge of a bucket starting there)."""
    pos = key >= 0x80000000
    mag = torch.where(pos, key - 0x80000000, 0x7FFFFFFF - key).clamp(0, 0x7F800000)
    v = mag.to(torch.int32).view(torch.float32).to(torch.float64)
    return torch.where(pos, v, -v)


def window_base(top: torch.Tensor, nb: int) -> torch.Tensor:
    return top - nb + 1


def shift(coarse, fine, top, new_top, nb):
    """Raise each channel's fine window to new_top (>= top), folding dropped coarse buckets. In place."""
    K = top.shape[0]
    f = fine.view(K, nb, SUB)
    c_of = window_base(top, nb)[:, None] + torch.arange(nb, device=top.device)[None, :]
    drop = (c_of < window_base(new_top, nb)[:, None]) & (c_of >= 1) & (top[:, None] >= 0)
    coarse.scatter_add_(1, c_of.clamp(0, COARSE - 1), torch.where(drop, f.sum(2), 0))
    src = torch.arange(nb, device=top.device)[None, :] + (new_top - top)[:, None]
    moved = f.gather(1, src.clamp(0, nb - 1)[:, :, None].expand(K, nb, SUB))
    f.copy_(torch.where((src < nb)[:, :, None], moved, 0))
    top.copy_(new_top)


def torch_update(state: dict, vals: torch.Tensor, nb: int) -> None:
    """Add vals (Tensor[K, n] float32) to the state tensors in place."""
    K = vals.shape[0]
    key, isnan, iszero = keys(vals)
    state["nan"] += isnan.sum(1)
    state["zeros"] += iszero.sum(1)
    valid = ~isnan & ~iszero
    state["kmin"].copy_(torch.minimum(state["kmin"], torch.where(valid, key, EMPTY_KMIN).min(1).values))
    state["kmax"].copy_(torch.maximum(state["kmax"], torch.where(valid, key, EMPTY_KMAX).max(1).values))
    c = key >> 23
    finite = valid & (c != 0) & (c != COARSE - 1)
    new_top = torch.maximum(state["top"], torch.where(finite, c, -1).max(1).values)
    shift(state["coarse"], state["fine"], state["top"], new_top, nb)
    base = window_base(state["top"], nb)[:, None]
    in_fine = finite & (c >= base)
    rows = torch.arange(K, device=vals.device)[:, None]
    fidx = rows * (nb * SUB) + (c - base) * SUB + ((key >> 16) & (SUB - 1))
    state["fine"] += torch.bincount(fidx[in_fine], minlength=K * nb * SUB).view(K, nb * SUB)
    cidx = rows * COARSE + c
    state["coarse"] += torch.bincount(cidx[valid & ~in_fine], minlength=K * COARSE).view(K, COARSE)


def merge(a: dict, b: dict, nb: int) -> None:
    """a += b (both states of the same nb), leaving a equal to the state of one stream with both."""
    new_top = torch.maximum(a["top"], b["top"])
    b = {k: v.clone() for k, v in b.items()}
    shift(a["coarse"], a["fine"], a["top"], new_top, nb)
    shift(b["coarse"], b["fine"], b["top"], new_top, nb)
    for name in ("coarse", "fine", "zeros", "nan"):
        a[name] += b[name]
    a["kmin"].copy_(torch.minimum(a["kmin"], b["kmin"]))
    a["kmax"].copy_(torch.maximum(a["kmax"], b["kmax"]))


def _layout(state: dict, nb: int):
    """(seq (K, 513) counts: coarse buckets 0..255, zeros, 256..511; cum; base; fine (K, nb, 128); n)."""
    K = state["top"].shape[0]
    fine = state["fine"].view(K, nb, SUB)
    base = window_base(state["top"], nb)
    c_of = base[:, None] + torch.arange(nb, device=base.device)[None, :]
    ok = (c_of >= 1) & (state["top"][:, None] >= 0)
    full = state["coarse"].clone().scatter_add_(1, c_of.clamp(0, COARSE - 1), torch.where(ok, fine.sum(2), 0))
    seq = torch.cat([full[:, :256], state["zeros"][:, None], full[:, 256:]], dim=1)
    return seq, seq.cumsum(1), base, fine, seq.sum(1)


def _in_window(c, base, top):
    return (top >= 0) & (c >= base) & (c >= 1) & (c <= top)


def _bucket(state, nb, c, key, seq, base, fine):
    """For coarse bucket c (K,) and, inside the window, the sub-bucket of key: (count before within c,
    count, lower key, upper key) of the finest bucket holding key."""
    K = c.shape[0]
    inw = _in_window(c, base, state["top"])
    slot = (c - base).clamp(0, nb - 1)
    row = fine.gather(1, slot[:, None, None].expand(K, 1, SUB))[:, 0]
    sub = (key >> 16) & (SUB - 1)
    fcum = row.cumsum(1)
    before_f = (fcum.gather(1, sub[:, None]) - row.gather(1, sub[:, None]))[:, 0]
    cnt_f = row.gather(1, sub[:, None])[:, 0]
    idx = torch.where(c < 256, c, c + 1)
    cnt_c = seq.gather(1, idx[:, None])[:, 0]
    lo_c, hi_c = c << 23, (c + 1) << 23
    lo_f = lo_c + (sub << 16)
    return (torch.where(inw, before_f, 0), torch.where(inw, cnt_f, cnt_c),
            torch.where(inw, lo_f, lo_c), torch.where(inw, lo_f + (1 << 16), hi_c))


def _edges(state, lo_key, hi_key):
    lo = torch.maximum(key_value(lo_key), key_value(state["kmin"].clamp(0, (1 << 32) - 1)))
    hi = torch.minimum(key_value(hi_key).clamp(-FLT_MAX, FLT_MAX), key_value(state["kmax"].clamp(0)))
    return lo, hi


def quantile(state: dict, nb: int, q: float) -> torch.Tensor:
    """(K,) float32: the value v with estimated fraction q of the non-NaN values at or below it;
    linear inside the finest bucket that holds rank q*n, clamped to [min, max]."""
    seq, cum, base, fine, n = _layout(state, nb)
    t = (q * n.to(torch.float64)).clamp(min=1e-6)  # > 0: never an empty leading bucket
    idx = torch.searchsorted(cum.to(torch.float64), t[:, None], side="left")[:, 0].clamp(0, 512)
    before = (cum.gather(1, idx[:, None]) - seq.gather(1, idx[:, None]))[:, 0]
    c = torch.where(idx < 256, idx, idx - 1)
    # the sub-bucket holding rank t inside the window: search the fine row
    K = c.shape[0]
    inw = _in_window(c, base, state["top"])
    slot = (c - base).clamp(0, nb - 1)
    row = fine.gather(1, slot[:, None, None].expand(K, 1, SUB))[:, 0]
    t_loc = t - before.to(torch.float64)
    sub = torch.searchsorted(row.cumsum(1).to(torch.float64), t_loc[:, None], side="left")[:, 0].clamp(0, SUB - 1)
    key = (c << 23) + (sub << 16)
    b_before, cnt, lo_key, hi_key = _bucket(state, nb, c, torch.where(inw, key, c << 23), seq, base, fine)
    frac = ((t_loc - b_before.to(torch.float64)) / cnt.clamp(min=1).to(torch.float64)).clamp(0, 1)
    lo, hi = _edges(state, lo_key, hi_key)
    v = lo + frac * (hi - lo)
    v = torch.where(idx == 256, torch.zeros_like(v), v)
    v = torch.where(c == 0, -math.inf, torch.where(c == COARSE - 1, math.inf, v))
    if q == 0.0 or q == 1.0:  # the exact min / max
        kk = state["kmin"] if q == 0.0 else state["kmax"]
        v = key_value(kk.clamp(0, (1 << 32) - 1))
        v = torch.where(state["zeros"] > 0, _with_zero(v, q), v)
    v = torch.where(n > 0, v, math.nan)
    return v.to(torch.float32)


def _with_zero(v, q):
    return torch.minimum(v, torch.zeros_like(v)) if q == 0.0 else torch.maximum(v, torch.zeros_like(v))


def cdf(state: dict, nb: int, values: torch.Tensor) -> torch.Tensor:
    """(K,) float64: estimated fraction of each channel's non-NaN values <= values[k] (float32 (K,))."""
    seq, cum, base, fine, n = _layout(state, nb)
    key, isnan, iszero = keys(values.to(torch.float32))
    c = torch.where(iszero, 256, key >> 23)
    b_before, cnt, lo_key, hi_key = _bucket(state, nb, c, key, seq, base, fine)
    idx = torch.where(c < 256, c, c + 1)
    before = (cum.gather(1, idx[:, None]) - seq.gather(1, idx[:, None]))[:, 0] + b_before
    lo, hi = _edges(state, lo_key, hi_key)
    v = values.to(torch.float32).to(torch.float64)
    frac = torch.where(hi > lo, ((v - lo) / (hi - lo)), (v >= lo).to(torch.float64)).clamp(0, 1)
    frac = torch.where((c == 0) | (c == COARSE - 1), 1.0, frac)
    below = before.to(torch.float64) + cnt.to(torch.float64) * frac
    zero_cum = cum[:, 256].to(torch.float64)
    out = torch.where(iszero, zero_cum, below) / n.clamp(min=1).to(torch.float64)
    return torch.where(isnan | (n == 0), math.nan, out)
