"""Grad-CAM reduction in plain PyTorch (Selvaraju et al., ICCV 2017): the definition of
unitscope.kernels.gradcam's result."""
from __future__ import annotations

import torch

from unitscope.reference.bilinear import bilinear_resize


def gradcam(activations, gradients=None, *, weights=None, relu=True, out_size=None,
            align_corners=False, normalize=False):
    """activations (B, K, h, w); gradients (B, K, h, w) or weights (B, K) / (B, T, K).

    cam = sum_k w_k A_k with w = spatial mean of the gradients; ReLU'd when `relu`; resized
    bilinearly to out_size; min-max normalized per map when `normalize` (a constant map -> 0).
    Returns float32 (B, h', w'), or (B, T, h', w') when weights has a T axis.

    NaN (the policy in unitscope.kernels): the sum is IEEE arithmetic over every channel, zero
    weights included (0 * NaN = 0 * inf = NaN); ReLU and the resize keep NaN; normalize takes the min
    and max of the non-NaN pixels and leaves NaN pixels NaN.
    """
    A = activations.to(torch.float32)
    if gradients is not None:
        w = gradients.to(torch.float32).mean(dim=(2, 3))[:, None, :]
        squeeze = True
    else:
        w = weights.to(torch.float32)
        squeeze = w.dim() == 2
        if squeeze:
            w = w[:, None, :]
    cam = torch.einsum("btk,bkhw->bthw", w, A)
    if relu:
        cam = torch.clamp(cam, min=0.0)
    if out_size is not None and tuple(out_size) != tuple(cam.shape[-2:]):
        cam = bilinear_resize(cam, out_size, align_corners)
    if normalize:
        nan = torch.isnan(cam)
        lo = torch.where(nan, torch.inf, cam).amin(dim=(2, 3), keepdim=True)
        hi = torch.where(nan, -torch.inf, cam).amax(dim=(2, 3), keepdim=True)
        rng = hi - lo
        ok = (rng > 0) & torch.isfinite(rng)
        cam = torch.where(ok, (cam - lo) / torch.where(ok, rng, torch.ones_like(rng)),
                          torch.where(nan, cam, torch.zeros_like(cam)))
    return cam[:, 0] if squeeze else cam
