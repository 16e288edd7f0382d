"""How much of an image's energy sits at high spatial frequencies: the radially averaged power
spectrum and the high-frequency share of power. Used to check that transforms, decorrelated colour
and priors give renders with less high-frequency noise than plain pixel ascent."""
from __future__ import annotations

import torch


def _as_batch(images) -> torch.Tensor:
    x = torch.as_tensor(images)
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or min(x.shape[-2:]) < 2:
        raise ValueError(f"images must be (B, C, H, W) or (C, H, W) with H, W >= 2, got shape {tuple(x.shape)}")
    return x.detach().to("cpu", torch.float64)


def _power_and_radius(images):
    """Power |FFT|^2 (B, H, W) summed over channels, mean removed per image and channel, normalized
    by H*W; and each frequency's radius (H, W) in cycles per pixel (0 .. 0.5*sqrt(2))."""
    x = _as_batch(images)
    h, w = x.shape[-2:]
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = (torch.fft.fft2(x).abs() ** 2).sum(dim=1) / (h * w)
    radius = torch.sqrt(torch.fft.fftfreq(h, dtype=torch.float64)[:, None] ** 2
                        + torch.fft.fftfreq(w, dtype=torch.float64)[None, :] ** 2)
    return power, radius


def radial_power_spectrum(images, bins: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Radially averaged power spectrum.

    Args:
        images (Tensor[B, C, H, W] or [C, H, W], float): the images (any range; each image's and
            channel's mean is removed first, so the DC term is 0).
        bins: number of frequency rings between 0 and 0.5 cycles/pixel (Nyquist); default
            min(H, W) // 2. Frequencies beyond Nyquist along the diagonal are left out.
    Returns:
        freqs (Tensor[bins], float64): ring centres in cycles per pixel;
        power (Tensor[B, bins], float64): mean power per ring (summed over channels), NaN for an
        empty ring.
    """
    power, radius = _power_and_radius(images)
    bins = bins if bins is not None else min(radius.shape) // 2
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    ring = torch.floor(radius / 0.5 * bins).long().flatten()
    keep = ring < bins
    ring = ring[keep]
    flat = power.flatten(1)[:, keep]
    total = torch.zeros(flat.shape[0], bins, dtype=torch.float64).index_add_(1, ring, flat)
    count = torch.zeros(bins, dtype=torch.float64).index_add_(0, ring, torch.ones_like(ring, dtype=torch.float64))
    freqs = (torch.arange(bins, dtype=torch.float64) + 0.5) * 0.5 / bins
    return freqs, total / count


def high_frequency_fraction(images, cutoff: float = 0.25) -> torch.Tensor:
    """Share of each image's power (mean removed) at radial frequencies above `cutoff` cycles per
    pixel (0.25 = half of Nyquist): about 0.8 for white noise, a few percent for a photo.

    Args:
        images (Tensor[B, C, H, W] or [C, H, W], float): the images.
    Returns:
        Tensor[B] float64 in [0, 1]; 0 for a constant image.
    """
    if not 0 < cutoff < 0.5:
        raise ValueError(f"cutoff must be in (0, 0.5) cycles per pixel, got {cutoff!r}")
    power, radius = _power_and_radius(images)
    total = power.sum(dim=(1, 2))
    high = (power * (radius > cutoff)).sum(dim=(1, 2))
    return torch.where(total > 0, high / total.clamp(min=1e-300), torch.zeros_like(total))
