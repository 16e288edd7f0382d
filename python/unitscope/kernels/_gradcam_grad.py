"""Grad-CAM's backward in plain PyTorch (registered for torch.ops.unitscope.gradcam, kernels/_ops.py):
the exact derivative of reference/gradcam.py, computed in float64 for float64 inputs (float32 else).
The bilinear resize is linear, out = M_h x M_w^T, so its backward is the transpose, M_h^T g M_w."""
from __future__ import annotations

import torch

from unitscope.reference.bilinear import bilinear_taps


def resize_matrix(n_in: int, n_out: int, align_corners: bool, dtype, device) -> torch.Tensor:
    """(n_out, n_in): row i holds output i's two taps and weights (reference/bilinear.py)."""
    i0, i1, l0, l1 = bilinear_taps(n_in, n_out, align_corners, device)
    one_hot = torch.nn.functional.one_hot
    return (l0.to(dtype)[:, None] * one_hot(i0, n_in).to(dtype) + l1.to(dtype)[:, None] * one_hot(i1, n_in).to(dtype))


def _normalize_backward(U: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """d/dU of the per-map min-max normalization (U - lo) / (hi - lo) (0 where the range is 0 or not
    finite, NaN pixels passed through), as autograd differentiates the reference: a min or max held
    by several pixels shares its gradient among them equally (torch.amin/amax)."""
    nan = torch.isnan(U)
    lo = torch.where(nan, torch.inf, U).amin(dim=(2, 3), keepdim=True)
    hi = torch.where(nan, -torch.inf, U).amax(dim=(2, 3), keepdim=True)
    rng = hi - lo
    ok = (rng > 0) & torch.isfinite(rng)
    r = torch.where(ok, rng, torch.ones_like(rng))
    N = (U - lo) / r
    gv = torch.where(nan, torch.zeros_like(g), g)           # the normalized pixels' gradients
    g_lo = (gv * (N - 1)).sum(dim=(2, 3), keepdim=True) / r  # d out / d lo = (N - 1) / range
    g_hi = -(gv * N).sum(dim=(2, 3), keepdim=True) / r       # d out / d hi = -N / range
    at_lo, at_hi = (U == lo) & ~nan, (U == hi) & ~nan
    n_lo = at_lo.sum(dim=(2, 3), keepdim=True).clamp(min=1)
    n_hi = at_hi.sum(dim=(2, 3), keepdim=True).clamp(min=1)
    gU = gv / r + at_lo * (g_lo / n_lo) + at_hi * (g_hi / n_hi)
    return torch.where(nan, g, torch.where(ok, gU, torch.zeros_like(gU)))


def backward(A, G, W, grad, relu: bool, out_h: int, out_w: int, align_corners: bool, normalize: bool):
    """(dA, dG, dW) for out = gradcam(A, G or W) (B, T, out_h, out_w) and its gradient `grad`;
    dG is None without G, dW None without W (W is (B, T, K))."""
    inputs = [t for t in (A, G, W) if t is not None]
    dt = torch.float64 if any(t.dtype == torch.float64 for t in inputs) else torch.float32
    B, K, h, w = A.shape
    A_ = A.to(dt)
    wts = G.to(dt).mean(dim=(2, 3))[:, None, :] if G is not None else W.to(dt)   # (B, T, K)
    S = torch.einsum("btk,bkhw->bthw", wts, A_)
    R = torch.clamp(S, min=0.0) if relu else S
    Mh = resize_matrix(h, out_h, align_corners, dt, A.device)
    Mw = resize_matrix(w, out_w, align_corners, dt, A.device)
    g = grad.to(dt)
    if normalize:
        U = R if (out_h, out_w) == (h, w) else torch.einsum("Hh,bthw,Ww->btHW", Mh, R, Mw)
        g = _normalize_backward(U, g)
    gR = g if (out_h, out_w) == (h, w) else torch.einsum("Hh,btHW,Ww->bthw", Mh, g, Mw)
    gS = gR * (S >= 0) if relu else gR   # clamp(min=0) passes the gradient where S >= 0
    gA = torch.einsum("btk,bthw->bkhw", wts, gS).to(A.dtype)
    gw = torch.einsum("bthw,bkhw->btk", gS, A_)
    gG = None if G is None else (gw[:, 0, :, None, None] / (h * w)).expand(B, K, h, w).to(G.dtype)
    gW = None if W is None else gw.to(W.dtype)
    return gA, gG, gW
