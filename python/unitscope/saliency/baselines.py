"""Reference inputs ("what the image looks like with the evidence removed") shared by Integrated
Gradients, Occlusion, LIME, KernelSHAP and the deletion/insertion metric."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BASELINES = ("black", "gray", "blur", "uniform", "mean")


def gaussian_blur(x, sigma):
    """Separable Gaussian blur of x (B, C, H, W), reflect padding, kernel radius ceil(3 sigma)."""
    if sigma <= 0:
        return x.clone()
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    C = x.shape[1]
    pad_h, pad_w = min(r, x.shape[2] - 1), min(r, x.shape[3] - 1)
    y = x
    if pad_w > 0:
        kw = k[r - pad_w:r + pad_w + 1]  # truncated for images narrower than the kernel: renormalized
        kw = (kw / kw.sum()).view(1, 1, 1, -1).expand(C, 1, 1, -1)
        y = F.conv2d(F.pad(y, (pad_w, pad_w, 0, 0), mode="reflect"), kw, groups=C)
    if pad_h > 0:
        kh = k[r - pad_h:r + pad_h + 1]
        kh = (kh / kh.sum()).view(1, 1, -1, 1).expand(C, 1, -1, 1)
        y = F.conv2d(F.pad(y, (0, 0, pad_h, pad_h), mode="reflect"), kh, groups=C)
    return y


def check_baseline(baseline):
    """Raise early for a baseline make_baseline would refuse (tensors are checked against x later)."""
    if isinstance(baseline, torch.Tensor) or (isinstance(baseline, (int, float)) and not isinstance(baseline, bool)):
        return baseline
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, a number or a Tensor; got {baseline!r}")
    return baseline


def make_baseline(x, baseline, *, input_range=(0.0, 1.0), blur_sigma=None, generator=None):
    """The baseline image(s) for x (B, C, H, W), same shape, dtype and device.

    baseline: "black" (input_range low), "gray" (middle of input_range), "blur" (x blurred with a
    Gaussian of blur_sigma, default max(H, W) / 20), "uniform" (uniform noise in input_range, drawn
    from `generator`), "mean" (each image's per-channel mean), a number, or a Tensor broadcastable
    to x (e.g. (C, 1, 1) or (B, C, H, W)).
    """
    lo, hi = float(input_range[0]), float(input_range[1])
    if isinstance(baseline, torch.Tensor):
        try:
            return torch.broadcast_to(baseline.to(x.device, x.dtype), x.shape).clone()
        except RuntimeError:
            raise ValueError(f"baseline tensor of shape {tuple(baseline.shape)} does not broadcast to x "
                             f"{tuple(x.shape)}") from None
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if baseline == "black":
        return torch.full_like(x, lo)
    if baseline == "gray":
        return torch.full_like(x, 0.5 * (lo + hi))
    if baseline == "blur":
        sigma = max(x.shape[2], x.shape[3]) / 20.0 if blur_sigma is None else float(blur_sigma)
        return gaussian_blur(x.detach(), sigma)
    if baseline == "uniform":
        u = torch.rand(x.shape, generator=generator, dtype=torch.float32,
                       device=generator.device if generator is not None else x.device)
        return (lo + (hi - lo) * u).to(x.device, x.dtype)
    if baseline == "mean":
        return x.detach().mean(dim=(2, 3), keepdim=True).expand_as(x).clone()
    raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, a number or a Tensor; got {baseline!r}")
