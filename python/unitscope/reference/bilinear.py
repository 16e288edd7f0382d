"""Bilinear resize in plain PyTorch: the definition every backend's resize reproduces bit for bit.

Indices and weights follow torch.nn.functional.interpolate(mode="bilinear") exactly. The value is
    out = l0h * (l0w * v00 + l1w * v01) + l1h * (l0w * v10 + l1w * v11)
with each product and sum rounded to float32 separately. F.interpolate itself picks different
CPU kernels by thread count and memory layout and may fuse multiply-adds (and does on CUDA), so its
last bit is not portable; this formula is, and stays within a few float32 ulps of it.
"""
from __future__ import annotations

import torch


def bilinear_taps(in_size: int, out_size: int, align_corners: bool, device=None):
    """Source indices and weights along one axis: (i0, i1 int64[out], l0, l1 float32[out])."""
    f32 = torch.float32
    dst = torch.arange(out_size, device=device, dtype=f32)
    if align_corners:
        scale = (torch.tensor(float(in_size - 1), dtype=f32) / torch.tensor(float(out_size - 1), dtype=f32)
                 if out_size > 1 else torch.tensor(0.0, dtype=f32))
        src = scale.to(device) * dst
    else:
        scale = torch.tensor(float(in_size), dtype=f32) / torch.tensor(float(out_size), dtype=f32)
        src = scale.to(device) * (dst + 0.5) - 0.5
        src = torch.clamp(src, min=0.0)
    i0 = torch.clamp(src.floor().to(torch.int64), max=in_size - 1)
    l1 = torch.clamp(src - i0.to(f32), 0.0, 1.0)
    l0 = 1.0 - l1
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, l0, l1


def bilinear_resize(x: torch.Tensor, out_size, align_corners: bool = False) -> torch.Tensor:
    """Resize the last two axes of x (float32, [..., h, w]) to out_size (H, W) -> [..., H, W]."""
    H, W = out_size
    h, w = x.shape[-2:]
    x = x.to(torch.float32)
    yi0, yi1, yl0, yl1 = bilinear_taps(h, H, align_corners, x.device)
    xi0, xi1, xl0, xl1 = bilinear_taps(w, W, align_corners, x.device)
    top = x.index_select(-2, yi0)
    bottom = x.index_select(-2, yi1)
    # products and sums as separate float32 ops (no fused multiply-add on the CPU's elementwise path)
    row0 = xl0 * top.index_select(-1, xi0) + xl1 * top.index_select(-1, xi1)
    row1 = xl0 * bottom.index_select(-1, xi0) + xl1 * bottom.index_select(-1, xi1)
    return yl0[:, None] * row0 + yl1[:, None] * row1
