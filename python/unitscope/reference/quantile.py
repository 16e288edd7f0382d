"""Exact per-channel quantiles in plain PyTorch: the definition of unitscope.ExactQuantile's result,
the candidate-buffer bookkeeping every backend shares (sizes, canonical form, the final
interpolation) and the torch backend's streaming update.
"""
from __future__ import annotations

import math

import torch

INTERPOLATIONS = ("linear", "lower", "higher", "nearest", "midpoint")


def exact_quantile(x: torch.Tensor, q: float, dim: int = 1, interpolation: str = "linear") -> torch.Tensor:
    """The definition: values rounded to float32, NaN ignored, torch.nanquantile in float64.

    x (Tensor[..., K, ...], any float dtype, channel axis at `dim`) -> Tensor[K] float32.
    """
    v = x.movedim(dim, 0).reshape(x.shape[dim], -1).to(torch.float32).to(torch.float64)
    return torch.nanquantile(v, q, dim=1, interpolation=interpolation).to(torch.float32)


def candidate_sizes(q: float, total: int) -> tuple[bool, int, int]:
    """(top, m, cap): keep the m largest values (top=True) or the m smallest (top=False).

    With n <= total non-NaN values the ascending ranks torch.quantile reads are
    floor(q (n-1)) .. ceil(q (n-1)) (q (n-1) rounded in float64 exactly as torch does). n - floor(q (n-1))
    never decreases as n grows, so the top m = total - floor(q (total-1)) + 1 values always hold every
    rank read, whatever number of NaNs the stream turns out to have; likewise the bottom
    m = ceil(q (total-1)) + 2. The smaller side is kept. cap = 2m (at least m + 4096) is the buffer length: a full
    buffer is cut back to its m best values (amortized O(1) per accepted value: about two element
    moves of nth_element each).
    """
    r = q * float(total - 1)
    m_top = total - int(math.floor(r)) + 1
    m_bottom = int(math.ceil(r)) + 2
    top = m_top <= m_bottom
    m = min(m_top if top else m_bottom, total)
    m = max(m, 1)
    cap = m + max(m, 4096)
    return top, m, cap


def canonical(buf: torch.Tensor, fill: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cand (K, m) sorted descending, fill (K,) <= m) from any backend's buffer (K, cap).

    Entries at or beyond fill[k] are padding (-inf). Values are in stored sign (negated in bottom mode).
    """
    cap = buf.shape[1]
    pos = torch.arange(cap, device=buf.device)
    masked = torch.where(pos[None, :] < fill[:, None], buf, torch.tensor(-math.inf, device=buf.device))
    top = torch.topk(masked, min(m, cap), dim=1, largest=True, sorted=True).values
    return top, torch.clamp(fill, max=m)


def torch_update(buf, fill, nan_count, vals: torch.Tensor, m: int) -> None:
    """The torch backend's streaming step, in place: buf (K, cap) keeps its top m canonical.

    vals (Tensor[K, n] float32, stored sign, NaN allowed).
    """
    vals = positive_zero(vals)
    isnan = torch.isnan(vals)
    nan_count += isnan.sum(dim=1)
    valid = vals.shape[1] - isnan.sum(dim=1)
    vals = torch.where(isnan, torch.tensor(-math.inf, device=vals.device), vals)
    cand, f = canonical(buf, fill, m)
    merged = torch.cat([cand, vals], dim=1)
    keep = min(m, merged.shape[1])
    top = torch.topk(merged, keep, dim=1, largest=True, sorted=True).values
    buf[:, :keep] = top
    fill.copy_(torch.clamp(f + valid, max=m))


def read_positions(n: torch.Tensor, q: float, top: bool, interpolation: str):
    """(ranks, below, above, idx_below, idx_above): the float64 ranks torch.quantile computes for n (K,)
    int64 non-NaN values, the ascending ranks read (above = below unless linear/midpoint) and their
    positions in the descending stored candidates (unclamped; valid where n > 0)."""
    qt = torch.tensor(q, dtype=torch.float64, device=n.device)
    ranks = qt * (n - 1)  # int64 * float64 -> float64, as in ATen's quantile
    ranks = torch.where(ranks < 0, torch.zeros_like(ranks), ranks)
    if interpolation == "lower":
        ranks = ranks.floor()
    elif interpolation == "higher":
        ranks = ranks.ceil()
    elif interpolation == "nearest":
        ranks = ranks.round()  # half to even, like torch
    below = ranks.to(torch.int64)
    above = ranks.ceil().to(torch.int64) if interpolation in ("linear", "midpoint") else below

    def index(r):  # ascending rank r -> index into the descending stored candidates
        return (n - 1 - r) if top else r

    return ranks, below, above, index(below), index(above)


def finish(cand: torch.Tensor, fill: torch.Tensor, n: torch.Tensor, q: float, top: bool,
           interpolation: str) -> torch.Tensor:
    """The quantile from canonical candidates, exactly as torch.quantile computes it in float64.

    cand (K, m) stored-sign values sorted descending (or any (K, m) holding the canonical values at
    the positions read_positions names); n (K,) int64 non-NaN counts. -> (K,) float32.
    """
    K = cand.shape[0]
    dev = cand.device
    n = n.to(dev)
    ranks, below, _, idx_below, idx_above = read_positions(n, q, top, interpolation)

    def value_at(idx):
        idx = torch.clamp(idx, 0, cand.shape[1] - 1)
        v = cand.gather(1, idx[:, None])[:, 0].to(torch.float64)
        return v if top else -v

    out = value_at(idx_below)
    if interpolation in ("linear", "midpoint"):
        w = torch.full_like(ranks, 0.5) if interpolation == "midpoint" else ranks - below
        out = torch.lerp(out, value_at(idx_above), w)
    out = torch.where(n > 0, out, torch.full((K,), math.nan, dtype=torch.float64, device=dev))
    return positive_zero(out.to(torch.float32))


def positive_zero(x: torch.Tensor) -> torch.Tensor:
    """x with -0.0 replaced by +0.0. Every backend stores, states and returns zeros as +0.0: the
    candidates are ordered by torch.topk, which on CUDA puts -0.0 below +0.0 and on the CPU does not,
    so mixed zeros would make equal results differ bit for bit."""
    return torch.where(x == 0, torch.zeros_like(x), x)
