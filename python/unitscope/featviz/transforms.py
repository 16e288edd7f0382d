"""Random, differentiable image transforms applied before every step of feature visualization, so
that the optimum is robust to small shifts, scalings and rotations rather than adversarial noise.
Each transform is a callable (image (B, 3, H, W), generators) -> image, where `generators` holds one
torch.Generator per image: image i's draws come from generators[i] only, so a batch of renders gives
each image the same transforms as rendering it alone with the same seed."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _randint(n: int, generator) -> int:
    return int(torch.randint(n, (1,), generator=generator))


def _draw(n: int, generators) -> list[int]:
    """One integer in [0, n) per image, from that image's generator."""
    return [_randint(n, g) for g in generators]


def _check(im, generators):
    if len(generators) != im.shape[0]:
        raise ValueError(f"transforms need one generator per image: {im.shape[0]} images, got {len(generators)}")


def pad(width: int, value: float = 0.5):
    """Pad every side by `width` pixels of a constant grey, so that jitter does not wrap content."""
    def t(im, generators):
        return F.pad(im, (width,) * 4, mode="constant", value=value)
    return t


def jitter(d: int):
    """Random crop that shifts each image by up to d - 1 pixels in x and y."""
    if d < 1:
        raise ValueError(f"jitter d must be >= 1, got {d}")

    def t(im, generators):
        _check(im, generators)
        h, w = im.shape[-2:]
        crops = []
        for i, g in enumerate(generators):
            dx, dy = _randint(d, g), _randint(d, g)
            crops.append(im[i, :, dy:h - (d - 1) + dy, dx:w - (d - 1) + dx])
        return torch.stack(crops)
    return t


def _affine(im, theta):
    """theta (B, 2, 3) per image."""
    grid = F.affine_grid(theta, list(im.shape), align_corners=False)
    return F.grid_sample(im, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_scale(scales):
    """Zoom each image by a factor drawn from `scales` (1.0 = unchanged), keeping the size."""
    scales = [float(s) for s in scales]

    def t(im, generators):
        _check(im, generators)
        inv = torch.tensor([1.0 / scales[i] for i in _draw(len(scales), generators)], dtype=im.dtype)
        theta = torch.zeros(im.shape[0], 2, 3, dtype=im.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = inv
        return _affine(im, theta.to(im.device))
    return t


def random_rotate(degrees):
    """Rotate each image by an angle drawn from `degrees`."""
    degrees = [float(a) for a in degrees]

    def t(im, generators):
        _check(im, generators)
        a = torch.tensor([math.radians(degrees[i]) for i in _draw(len(degrees), generators)], dtype=torch.float64)
        c, s = torch.cos(a), torch.sin(a)
        zero = torch.zeros_like(a)
        theta = torch.stack([torch.stack([c, -s, zero], 1), torch.stack([s, c, zero], 1)], 1)
        return _affine(im, theta.to(im.device, im.dtype))
    return t


def compose(transforms):
    def t(im, generators):
        for tr in transforms:
            im = tr(im, generators)
        return im
    return t


def standard():
    """Lucid's default robustness set: pad, jitter, small scalings and rotations, jitter again."""
    return compose([pad(12), jitter(8), random_scale([1 + (i - 5) / 50 for i in range(11)]),
                    random_rotate(range(-10, 11)), jitter(4)])
