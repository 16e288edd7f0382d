"""Pictures a person can look at: attribution heat maps over the photo (signed maps in a diverging
colormap centred on 0; pixel-gradient maps as clipped, smoothed magnitudes), a unit's thresholded
region outlined on the photo, and grids of them written as PNG with Pillow."""
from __future__ import annotations

import numpy as np
import torch

from unitscope._io import atomic_path


def to_image_array(image):
    """image: Tensor/array (3, H, W) or (1, 3, H, W) or (H, W, 3) or (H, W), floats in [0, 1] or
    uint8 -> float64 array (H, W, 3) in [0, 1]."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float().numpy()
    arr = np.asarray(image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ValueError(f"image must be (3, H, W), (H, W, 3) or (H, W), got shape {np.asarray(image).shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    arr = arr.astype(np.float64) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float64)
    return np.clip(arr, 0.0, 1.0)


def _map_2d(attribution, size):
    """Attribution (H, W), (1, H, W), (C, H, W) (summed over C) -> float64 (H, W) resized to size."""
    a = attribution.detach().cpu().double() if isinstance(attribution, torch.Tensor) else torch.as_tensor(
        np.asarray(attribution, dtype=np.float64))
    while a.dim() > 3 and a.shape[0] == 1:
        a = a[0]
    if a.dim() == 3:
        a = a.sum(dim=0)
    if a.dim() != 2:
        raise ValueError(f"attribution must be (H, W) or (C, H, W), got shape {tuple(a.shape)}")
    if tuple(a.shape) != tuple(size):
        a = torch.nn.functional.interpolate(a[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return torch.nan_to_num(a).numpy()


def colorize(attribution, cmap=None, signed=None, size=None, clip_percentile=99.5):
    """Attribution -> (RGB float64 (H, W, 3), normalized map (H, W)).

    Unsigned maps: scaled from 0 to their clip_percentile-th percentile (larger values saturate;
    pixel-level gradient maps are dominated by a few spikes otherwise), cmap default "inferno".
    Signed maps (signed=None: any value < 0): scaled by that percentile of |a| and centred, so 0
    sits in the middle of a diverging cmap (default "RdBu_r": red positive, blue negative).
    """
    import matplotlib

    size = size if size is not None else tuple(np.asarray(attribution.shape)[-2:])
    a = _map_2d(attribution, size)
    signed, lo, hi = _limits(a, signed, clip_percentile)
    if signed:
        norm = 0.5 + 0.5 * np.clip(a / hi if hi > 0 else a * 0, -1, 1)
        cmap = cmap or "RdBu_r"
    else:
        norm = np.clip((a - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(a)
        cmap = cmap or "inferno"
    rgb = matplotlib.colormaps[cmap](norm)[..., :3]
    return rgb, (np.abs(norm - 0.5) * 2 if signed else norm)


def _limits(a, signed, clip_percentile):
    """(signed, lo, hi) of the colour scale of map `a` (see colorize): signed maps run from -hi to hi,
    hi = the clip_percentile-th percentile of |a|; unsigned ones from lo = min(a.min(), 0) to hi = that
    percentile of a."""
    if signed is None:
        signed = bool((a < 0).any())
    if signed:
        m = np.percentile(np.abs(a), clip_percentile)
        m = m if m > 0 else np.abs(a).max()
        return True, -float(m), float(m)
    lo = min(a.min(), 0.0)
    hi = np.percentile(a, clip_percentile)
    hi = hi if hi > lo else a.max()
    return False, float(lo), float(hi)


def colorbar(image, attribution, cmap=None, signed=None, clip_percentile=99.5, label=None, width=14):
    """`image` (an overlay, (H, W, 3)) with a colour bar on its right: the colormap overlay() and
    colorize() use for `attribution`, labelled with the map values at its ends (and 0 in the middle of
    a signed map); `label` (str, optional) is written under it (e.g. 'x 99th pct'). Returns uint8
    (H, W + width + 50, 3)."""
    import matplotlib
    from PIL import Image, ImageDraw

    img = np.round(to_image_array(image) * 255).astype(np.uint8)
    h = img.shape[0]
    signed, lo, hi = _limits(_map_2d(attribution, tuple(np.asarray(attribution.shape)[-2:])), signed,
                             clip_percentile)
    cmap = cmap or ("RdBu_r" if signed else "inferno")
    ramp = np.linspace(1.0, 0.0, max(h - 12, 2))  # top = the largest value
    bar = np.round(matplotlib.colormaps[cmap](ramp)[:, :3] * 255).astype(np.uint8)
    canvas = Image.new("RGB", (img.shape[1] + width + 50, h), "white")
    canvas.paste(Image.fromarray(img), (0, 0))
    x0 = img.shape[1] + 4
    canvas.paste(Image.fromarray(np.repeat(bar[:, None, :], width, axis=1)), (x0, 6))
    draw = ImageDraw.Draw(canvas)
    ticks = [(6, hi), (h - 16, lo)] + ([(h // 2 - 5, 0.0)] if signed else [])
    for y, v in ticks:
        draw.text((x0 + width + 3, y), f"{v:.2g}", fill="black")
    if label:
        draw.text((x0 + width + 3, h // 2 + 8), str(label)[:8], fill="black")
    return np.asarray(canvas)


def gradient_map(attribution, percentile=99.0, smooth=None):
    """A pixel-level gradient-family map (gradient, Integrated Gradients, SmoothGrad, Guided
    Backprop...) as the literature shows it (Smilkov et al. 2017; Sundararajan et al. 2017): the
    magnitude summed over colour channels, clipped at its `percentile`-th percentile and scaled to
    [0, 1], optionally smoothed by a Gaussian of standard deviation `smooth` pixels. Raw, such maps
    are a few spikes in faint speckle.

    attribution: (C, H, W) or (H, W) Tensor/array (a leading batch axis of 1 is dropped).
    Returns float64 array (H, W) in [0, 1].
    """
    if not 0.0 < float(percentile) <= 100.0:
        raise ValueError(f"percentile must lie in (0, 100], got {percentile!r}")
    if smooth is not None and not float(smooth) > 0:
        raise ValueError(f"smooth must be None or a positive number of pixels, got {smooth!r}")
    a = attribution.detach().cpu().double() if isinstance(attribution, torch.Tensor) else torch.as_tensor(
        np.asarray(attribution, dtype=np.float64))
    while a.dim() > 3 and a.shape[0] == 1:
        a = a[0]
    if a.dim() not in (2, 3):
        raise ValueError(f"attribution must be (H, W) or (C, H, W), got shape {tuple(a.shape)}")
    m = torch.nan_to_num(a).abs()
    m = m.sum(dim=0) if m.dim() == 3 else m
    if smooth is not None:  # separable Gaussian, reflect-padded, radius 3 sigma
        r = max(1, int(round(3 * float(smooth))))
        t = torch.arange(-r, r + 1, dtype=torch.float64)
        g = torch.exp(-0.5 * (t / float(smooth)) ** 2)
        g = g / g.sum()
        img = m[None, None]
        img = torch.nn.functional.pad(img, (r, r, r, r), mode="reflect" if min(m.shape) > r else "replicate")
        img = torch.nn.functional.conv2d(img, g.view(1, 1, 1, -1))
        m = torch.nn.functional.conv2d(img, g.view(1, 1, -1, 1))[0, 0]
    m = m.numpy()
    hi = np.percentile(m, percentile)
    hi = hi if hi > 0 else m.max()
    return np.clip(m / hi, 0.0, 1.0) if hi > 0 else np.zeros_like(m)


def outline_mask(image, mask, dim=0.45, color=(255, 230, 0), width=2):
    """The image with the region of `mask` (bool (H, W), True = inside) outlined in `color` (a line
    `width` pixels wide, inside the region) and the rest darkened to `dim` of its brightness: where a
    unit passes its threshold. Returns uint8 (H, W, 3)."""
    img = to_image_array(image)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != img.shape[:2]:
        raise ValueError(f"mask must have the image's shape {img.shape[:2]}, got {mask.shape}")
    inner = mask.copy()
    for _ in range(width):  # erode by one pixel (4-neighbourhood) per step
        prev = inner.copy()
        inner[1:, :] &= prev[:-1, :]
        inner[:-1, :] &= prev[1:, :]
        inner[:, 1:] &= prev[:, :-1]
        inner[:, :-1] &= prev[:, 1:]
    out = np.where(mask[..., None], img, img * float(dim))
    out = np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)
    out[mask & ~inner] = color
    return out


def overlay(image, attribution, cmap=None, alpha=0.5, signed=None, clip_percentile=99.5):
    """The heat map of `attribution` over `image`, uint8 array (H, W, 3).

    Args:
        image: (3, H, W) / (H, W, 3) / (H, W) floats in [0, 1] or uint8 (Tensor or array).
        attribution: (H, W) or (C, H, W) (summed over C) map, resized bilinearly to the image.
        cmap (str): a matplotlib colormap name; default "inferno" (unsigned) / "RdBu_r" (signed).
        alpha (float in [0, 1]): opacity of the heat map where it is strongest; the opacity
            follows the map's magnitude so unimportant regions show the photo.
        signed (bool or None): force the diverging/sequential treatment; None decides by sign.
        clip_percentile (float): the map is scaled so this percentile of |map| is full strength.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    img = to_image_array(image)
    rgb, strength = colorize(attribution, cmap=cmap, signed=signed, size=img.shape[:2],
                             clip_percentile=clip_percentile)
    w = float(alpha) * (0.35 + 0.65 * strength)[..., None]
    out = (1.0 - w) * img + w * rgb
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def save_image(array, path):
    """Write an (H, W, 3) uint8 / float [0, 1] array as PNG (atomically: temp file, then rename)."""
    from PIL import Image

    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        arr = np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return path


def save_grid(tiles, path, titles=None, ncols=None, pad=4, title_height=18):
    """Tiles (list of (H, W, 3) arrays, uint8 or float [0, 1], or images as for overlay) in a grid PNG.

    titles: one string per tile, written above it. ncols: default all in one row (at most 6).
    Tiles of different sizes are placed top-left in cells of the largest size. Returns path.
    """
    from PIL import Image, ImageDraw

    if not tiles:
        raise ValueError("tiles must hold at least one image")
    if titles is not None and len(titles) != len(tiles):
        raise ValueError(f"titles must have one entry per tile ({len(tiles)}), got {len(titles)}")
    arrs = [np.round(to_image_array(t) * 255).astype(np.uint8) for t in tiles]
    ncols = ncols or min(len(arrs), 6)
    nrows = -(-len(arrs) // ncols)
    th = title_height if titles else 0
    ch, cw = max(a.shape[0] for a in arrs), max(a.shape[1] for a in arrs)
    canvas = Image.new("RGB", (ncols * (cw + pad) + pad, nrows * (ch + th + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, a in enumerate(arrs):
        r, c = divmod(i, ncols)
        x0, y0 = pad + c * (cw + pad), pad + r * (ch + th + pad)
        if titles:
            draw.text((x0 + 2, y0 + 2), str(titles[i])[: max(8, cw // 6)], fill="black")
        canvas.paste(Image.fromarray(a), (x0, y0 + th))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path
