"""Image parameterizations for feature visualization: plain pixels, or a Fourier spectrum scaled
down at high frequencies, both optionally in decorrelated colour space (Olah et al., Distill 2017),
or the latent code of a user's generator (a learned prior). Each maps its parameters to an image in
[0, 1] of shape (B, 3, H, W)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from unitscope.featviz._loop import frozen

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


class GeneratorImage(nn.Module):
    """image = G(z): only the latent code z (batch, *z_shape) is a parameter, so every image stays in
    the generator's range (a GAN's generator, a decoder: the learned prior of Nguyen et al. 2016/2017).
    G runs in eval mode with its parameters frozen during each call and is not registered as a
    submodule: its weights are never optimized or moved, so put it on the render's device first."""

    def __init__(self, G: nn.Module, z_shape: tuple, batch: int, size: tuple[int, int], value_range=(0.0, 1.0),
                 std: float = 1.0, generator: torch.Generator | None = None):
        super().__init__()
        object.__setattr__(self, "G", G)  # held, not registered: not in parameters(), state_dict() or .to()
        self.size = tuple(size)
        self.value_range = value_range
        self.latent = nn.Parameter(randn((batch, *z_shape), generator) * std)

    def forward(self) -> torch.Tensor:
        with frozen(self.G):
            im = self.G(self.latent)
        if not isinstance(im, torch.Tensor) or im.dim() != 4 or im.shape[:2] != (self.latent.shape[0], 3):
            got = tuple(im.shape) if isinstance(im, torch.Tensor) else type(im).__name__
            raise ValueError(f"the generator must map latents {tuple(self.latent.shape)} to images "
                             f"({self.latent.shape[0]}, 3, H, W), got {got}")
        lo, hi = self.value_range
        im = ((im - lo) / (hi - lo)).clamp(0, 1)
        if tuple(im.shape[-2:]) != self.size:
            im = F.interpolate(im, size=self.size, mode="bilinear", align_corners=False)
        return im


class GeneratorParam:
    """What `param=` takes to optimize through a generator; made by generator(G, z_shape)."""

    def __init__(self, G, z_shape, value_range, std):
        self.G, self.z_shape, self.value_range, self.std = G, z_shape, value_range, std

    def __call__(self, batch, size, decorrelate=True, generator=None) -> GeneratorImage:
        return GeneratorImage(self.G, self.z_shape, batch, size, self.value_range, self.std, generator)

    def __repr__(self):
        return f"generator({type(self.G).__name__}, z_shape={self.z_shape})"


def generator(G: nn.Module, z_shape, *, value_range=(0.0, 1.0), std: float = 1.0) -> GeneratorParam:
    """A parameterization through a user's generator, for `render(model, objective, param=generator(G, 128))`.

    G: a module mapping latents (B, *z_shape) float32 to images (B, 3, h, w) with values in `value_range`
        ((0, 1), or (-1, 1) for the usual tanh GAN output); rescaled to [0, 1] and resized to render's size.
    z_shape (int or tuple of ints): one latent's shape, e.g. 128 or (64, 4, 4).
    std: the initial latents are N(0, std^2), drawn from render's seed. decorrelate does not apply.
    The objectives, transforms and penalties are the same as for the other parameterizations.
    """
    if not isinstance(G, nn.Module):
        raise TypeError(f"G must be an nn.Module mapping latents to images, got {type(G).__name__}")
    shape = (z_shape,) if isinstance(z_shape, int) else tuple(z_shape)
    if not shape or not all(isinstance(d, int) and d >= 1 for d in shape):
        raise ValueError(f"z_shape must be a positive int or a tuple of positive ints, got {z_shape!r}")
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range!r}")
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std!r}")
    return GeneratorParam(G, shape, (lo, hi), float(std))


PARAMETERIZATIONS = {"pixel": PixelImage, "fourier": FourierImage}


def make_image(param, batch: int, size, decorrelate: bool, generator=None) -> nn.Module:
    """param: "pixel", "fourier", or a GeneratorParam from generator(G, z_shape)."""
    if isinstance(param, GeneratorParam):
        return param(batch, size, decorrelate=decorrelate, generator=generator)
    if param not in PARAMETERIZATIONS:
        raise ValueError(f"param must be one of {sorted(PARAMETERIZATIONS)} or featviz.generator(G, z_shape), "
                         f"got {param!r}")
    return PARAMETERIZATIONS[param](batch, size, decorrelate=decorrelate, generator=generator)
