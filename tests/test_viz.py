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
