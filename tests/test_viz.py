"""Overlays and grids: shapes, colours where the map is strong, signed maps in a diverging colormap."""
import numpy as np
import pytest
import torch
from PIL import Image

from unitscope import viz


def test_overlay_unsigned_and_signed():
    img = torch.full((3, 20, 30), 0.5)
    a = torch.zeros(20, 30)
    a[5:10, 5:10] = 1.0
    out = viz.overlay(img, a, alpha=0.8)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    # the hot spot is bright yellow-ish in inferno, the rest darker than the photo
    assert out[7, 7].astype(int).sum() > out[15, 25].astype(int).sum() + 150
    s = torch.zeros(10, 10)
    s[:, :5] = 1.0
    s[:, 5:] = -1.0
    out = viz.overlay(np.full((10, 10, 3), 128, np.uint8), s, alpha=1.0)
    r, b = out[5, 2].astype(int), out[5, 7].astype(int)
    assert r[0] > r[2] + 60 and b[2] > b[0] + 60  # positive red, negative blue (RdBu_r)
    zero = viz.overlay(img, torch.zeros(20, 30), alpha=0.0)
    assert np.abs(zero.astype(int) - 128).max() <= 1  # alpha 0 shows the photo


def test_overlay_resizes_and_sums_channels():
    out = viz.overlay(np.zeros((16, 16)), torch.rand(3, 8, 8))
    assert out.shape == (16, 16, 3)
    with pytest.raises(ValueError, match="alpha must lie in"):
        viz.overlay(np.zeros((4, 4)), torch.rand(4, 4), alpha=2)
    with pytest.raises(ValueError, match="attribution must be"):
        viz.overlay(np.zeros((4, 4)), torch.rand(2, 2, 4, 4))
    with pytest.raises(ValueError, match="image must be"):
        viz.overlay(np.zeros((4, 4, 5)), torch.rand(4, 4))


def test_save_grid(tmp_path):
    tiles = [np.zeros((10, 12, 3), np.uint8), np.full((10, 12, 3), 255, np.uint8), torch.rand(3, 8, 8)]
    p = viz.save_grid(tiles, tmp_path / "g.png", titles=["a", "b", "c"], ncols=2)
    im = np.asarray(Image.open(p))
    assert im.shape == (2 * (10 + 18 + 4) + 4, 2 * (12 + 4) + 4, 3)
    assert (im[4 + 18 + 5, 4 + 16 + 5] == 255).all() and (im[4 + 18 + 5, 4 + 5] == 0).all()
    with pytest.raises(ValueError, match="one entry per tile"):
        viz.save_grid(tiles, tmp_path / "h.png", titles=["a"])
    with pytest.raises(ValueError, match="at least one image"):
        viz.save_grid([], tmp_path / "h.png")
    viz.save_image(np.ones((4, 4, 3)), tmp_path / "one.png")
    assert (np.asarray(Image.open(tmp_path / "one.png")) == 255).all()


def test_gradient_map_magnitude_clip_smooth():
    g = torch.zeros(3, 32, 32)
    g[0, 10, 10], g[1, 10, 10] = 5.0, -5.0          # channel-summed magnitude: |5| + |-5|, not 5 - 5
    g[2, 20:30, 20:30] = 1.0                         # a region of moderate values
    m = viz.gradient_map(g, percentile=99)
    assert m.shape == (32, 32) and m.min() == 0 and m.max() == 1
    assert m[10, 10] == 1 and m[25, 25] == pytest.approx(1 / np.percentile([10] + [1] * 100 + [0] * 923, 99))
    np.testing.assert_allclose(viz.gradient_map(g, percentile=100)[25, 25], 0.1)  # no clipping: 1 / 10
    s = viz.gradient_map(g, percentile=100, smooth=2.0)
    assert s[10, 12] > 0 and s[25, 25] == 1  # spread out; the flat region's centre stays the maximum
    assert (viz.gradient_map(torch.zeros(1, 3, 8, 8)) == 0).all()
    with pytest.raises(ValueError, match="percentile must lie in"):
        viz.gradient_map(g, percentile=0)
    with pytest.raises(ValueError, match="smooth must be None or a positive"):
        viz.gradient_map(g, smooth=-1)
    with pytest.raises(ValueError, match="attribution must be"):
        viz.gradient_map(torch.zeros(2, 3, 4, 4))


def test_outline_mask():
    img = np.full((20, 20, 3), 200, np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    out = viz.outline_mask(img, mask, dim=0.5, width=2)
    assert (out[0, 0] == 100).all()                            # outside: dimmed
    assert (out[10, 10] == 200).all()                           # inside: the photo
    assert (out[5, 10] == (255, 230, 0)).all() and (out[6, 10] == (255, 230, 0)).all()  # 2-pixel outline
    assert (out[7, 10] == 200).all()
    assert (viz.outline_mask(img, np.zeros((20, 20), bool)) < 200).all()
    with pytest.raises(ValueError, match="mask must have the image's shape"):
        viz.outline_mask(img, mask[:10])
