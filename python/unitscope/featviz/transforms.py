"""Random, differentiable image transforms applied before every step of feature visualization, so
that the optimum is robust to small shifts, scalings and rotations rather than adversarial noise.
Each transform is a callable (image (B, 3, H, W), generator) -> image."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _choice(values, generator):
    i = int(torch.randint(len(values), (1,), generator=generator))
    return values[i]


def pad(width: int, value: float = 0.5):
    """Pad every side by `width` pixels of a constant grey, so that jitter does not wrap content."""
    def t(im, generator):
        return F.pad(im, (width,) * 4, mode="constant", value=value)
    return t


def jitter(d: int):
    """Random crop that shifts the image by up to d - 1 pixels in x and y."""
    if d < 1:
        raise ValueError(f"jitter d must be >= 1, got {d}")

    def t(im, generator):
        h, w = im.shape[-2:]
        dx = int(torch.randint(d, (1,), generator=generator))
        dy = int(torch.randint(d, (1,), generator=generator))
        return im[..., dy:h - (d - 1) + dy, dx:w - (d - 1) + dx]
    return t


def _affine(im, theta):
    grid = F.affine_grid(theta.expand(im.shape[0], 2, 3), list(im.shape), align_corners=False)
    return F.grid_sample(im, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_scale(scales):
    """Zoom by a factor drawn from `scales` (1.0 = unchanged), keeping the size."""
    scales = list(scales)

    def t(im, generator):
        s = float(_choice(scales, generator))
        theta = torch.tensor([[1.0 / s, 0.0, 0.0], [0.0, 1.0 / s, 0.0]], device=im.device, dtype=im.dtype)
        return _affine(im, theta[None])
    return t


def random_rotate(degrees):
    """Rotate by an angle drawn from `degrees`."""
    degrees = list(degrees)

    def t(im, generator):
        a = math.radians(float(_choice(degrees, generator)))
        theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
                             device=im.device, dtype=im.dtype)
        return _affine(im, theta[None])
    return t


def compose(transforms):
    def t(im, generator):
        for tr in transforms:
            im = tr(im, generator)
        return im
    return t


def standard():
    """Lucid's default robustness set: pad, jitter, small scalings and rotations, jitter again."""
    return compose([pad(12), jitter(8), random_scale([1 + (i - 5) / 50 for i in range(11)]),
                    random_rotate(range(-10, 11)), jitter(4)])
