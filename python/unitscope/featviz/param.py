"""Image parameterizations for feature visualization: plain pixels, or a Fourier spectrum scaled
down at high frequencies, both optionally in decorrelated colour space (Olah et al., Distill 2017).
Each maps its parameters to an image in [0, 1] of shape (B, 3, H, W)."""
from __future__ import annotations

import math

import torch
from torch import nn

# Square root of ImageNet's colour correlation, from its SVD (the values Lucid published); columns
# scaled so the largest has unit norm. Optimizing in this basis decorrelates the colour channels.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_CORRELATION = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


def randn(shape, generator=None) -> torch.Tensor:
    """Normal noise of `shape` (B, ...). `generator` is one torch.Generator for the whole batch or a
    list of B, one per image: then image i's draw does not depend on the batch size."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"one generator per image: batch {shape[0]}, got {len(generator)} generators")
        return torch.cat([torch.randn(1, *shape[1:], generator=g) for g in generator])
    return torch.randn(*shape, generator=generator)


def _to_rgb(x: torch.Tensor, decorrelate: bool) -> torch.Tensor:
    if decorrelate:
        x = torch.einsum("bchw,dc->bdhw", x, COLOR_CORRELATION.to(x.device, x.dtype))
    return torch.sigmoid(x)


class PixelImage(nn.Module):
    """One free parameter per pixel and channel."""

    def __init__(self, batch: int, size: tuple[int, int], decorrelate: bool = True, std: float = 0.01,
                 generator: torch.Generator | None = None):
        super().__init__()
        h, w = size
        self.decorrelate = decorrelate
        self.pixels = nn.Parameter(randn((batch, 3, h, w), generator) * std)

    def forward(self) -> torch.Tensor:
        return _to_rgb(self.pixels, self.decorrelate)


class FourierImage(nn.Module):
    """A spectrum whose coefficients are scaled by 1 / frequency**decay_power, so that gradient steps
    move low frequencies as easily as high ones."""

    def __init__(self, batch: int, size: tuple[int, int], decorrelate: bool = True, std: float = 0.01,
                 decay_power: float = 1.0, generator: torch.Generator | None = None):
        super().__init__()
        h, w = size
        self.size = (h, w)
        self.decorrelate = decorrelate
        fy = torch.fft.fftfreq(h)[:, None]
        fx = torch.fft.rfftfreq(w)[None, :]
        freq = torch.sqrt(fx ** 2 + fy ** 2)
        scale = 1.0 / torch.clamp(freq, min=1.0 / max(h, w)) ** decay_power
        self.register_buffer("scale", scale * math.sqrt(h * w))
        self.spectrum = nn.Parameter(randn((batch, 3, h, w // 2 + 1, 2), generator) * std)

    def forward(self) -> torch.Tensor:
        spec = torch.view_as_complex(self.spectrum) * self.scale
        x = torch.fft.irfft2(spec, s=self.size) / 4.0  # 1/N inverse, as in Lucid
        return _to_rgb(x, self.decorrelate)


PARAMETERIZATIONS = {"pixel": PixelImage, "fourier": FourierImage}


def make_image(param: str, batch: int, size, decorrelate: bool, generator=None) -> nn.Module:
    if param not in PARAMETERIZATIONS:
        raise ValueError(f"param must be one of {sorted(PARAMETERIZATIONS)}, got {param!r}")
    return PARAMETERIZATIONS[param](batch, size, decorrelate=decorrelate, generator=generator)
