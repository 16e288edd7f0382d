"""Occlusion, LIME and KernelSHAP against answers computed by hand: a linear model (every method
recovers its exact contributions) and brute-force Shapley values of a small nonlinear model."""
import itertools
import math

import numpy as np
import pytest
import torch
from tiny_models import Linear, SmallCNN

from unitscope.saliency import LIME, KernelSHAP, Occlusion
from unitscope.saliency.occlusion import window_starts
from unitscope.saliency.superpixels import grid_segments, relabel, weighted_linear_fit


def test_window_starts_reach_border():
    assert window_starts(5, 2, 2) == [0, 2, 3]
    assert window_starts(6, 2, 2) == [0, 2, 4]
    assert window_starts(4, 8, 2) == [0]


@pytest.mark.parametrize("window,stride", [(2, 1), ((3, 2), (2, 3)), (6, 6)])
def test_occlusion_by_hand(window, stride):
    lin = Linear(shape=(3, 6, 5)).eval()
    x = torch.rand(2, 3, 6, 5, generator=torch.Generator().manual_seed(0)).double()
    lin = lin.double()
    wh, ww = (window, window) if isinstance(window, int) else window
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    wh, ww = min(wh, 6), min(ww, 5)
    expect = np.zeros((2, 6, 5))
    for b, c in enumerate([1, 2]):
        contrib = (x[b] * lin.w(c).double()).sum(0).numpy()  # baseline 0: the drop is the window's sum
        total, count = np.zeros((6, 5)), np.zeros((6, 5))
        for t in window_starts(6, wh, sh):
            for l in window_starts(5, ww, sw):
                total[t:t + wh, l:l + ww] += contrib[t:t + wh, l:l + ww].sum()
                count[t:t + wh, l:l + ww] += 1
        expect[b] = total / np.maximum(count, 1)  # uncovered pixels (stride > window) get 0
    got = Occlusion(lin, window, stride, baseline="black", batch_size=7)(x, [1, 2])
    assert np.isfinite(got.numpy()).all()
    np.testing.assert_allclose(got.numpy(), expect, rtol=1e-9, atol=1e-12)


def test_occlusion_important_patch_is_positive():
    # the score is the mean of one 3x3 patch: occluding it with black drops the score
    class Patch(torch.nn.Module):
        def forward(self, x):
            s = x[:, :, 2:5, 3:6].mean(dim=(1, 2, 3))
            return torch.stack([s, -s], 1)

    x = torch.ones(1, 3, 8, 8)
    m = Occlusion(Patch(), 3, 3, baseline="black")(x, 0)
    assert m[0, 3, 4] > 0 and m[0, 7, 0] == 0 and m.min() >= 0


def test_grid_segments_and_relabel():
    g = grid_segments(6, 5, 4)  # cell 3 -> 2 x 2 cells
    assert g.shape == (6, 5) and g.unique().tolist() == [0, 1, 2, 3]
    assert g[0, 0] == 0 and g[0, 4] == 1 and g[5, 0] == 2 and g[5, 4] == 3
    lab, M = relabel(torch.tensor([[7, 7], [3, 9]]))
    assert M == 3 and lab.tolist() == [[1, 1], [0, 2]]


def test_weighted_linear_fit_recovers_plane():
    g = torch.Generator().manual_seed(0)
    Z = torch.rand(50, 3, generator=g, dtype=torch.float64)
    y = (Z @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)) + 0.25
    coef, b = weighted_linear_fit(Z, y, torch.rand(50, generator=g, dtype=torch.float64) + 0.1)
    torch.testing.assert_close(coef[:, 0], torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(b, torch.tensor([0.25], dtype=torch.float64))


def linear_superpixel_truth(lin, x, seg, c, baseline=0.5):
    """For a linear model, a superpixel's effect is sum over its pixels of w * (x - baseline)."""
    contrib = ((x[0] - baseline) * lin.w(c)).sum(0)
    return torch.stack([contrib[seg == m].sum() for m in range(int(seg.max()) + 1)])


@pytest.mark.parametrize("cls", [LIME, KernelSHAP])
def test_linear_model_exact(cls):
    lin = Linear(shape=(3, 6, 5)).eval()
    x = torch.rand(1, 3, 6, 5, generator=torch.Generator().manual_seed(2))
    seg = torch.tensor(np.repeat(np.arange(6), 5).reshape(6, 5) // 2)  # 3 horizontal bands
    kw = dict(ridge=0.0) if cls is LIME else {}
    method = cls(lin, segments=seg, n_samples=40, baseline="gray", batch_size=16, **kw)
    fit = method.explain(x, 3)[0]
    truth = linear_superpixel_truth(lin, x, seg, 3)
    torch.testing.assert_close(fit.coefficients[0].float(), truth, rtol=1e-4, atol=1e-4)
    m = method(x, 3)
    torch.testing.assert_close(m[0], truth[seg], rtol=1e-4, atol=1e-4)


def test_kernel_shap_exact_shapley_values_of_nonlinear_model():
    net = SmallCNN(classes=4)
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    seg = grid_segments(8, 8, 4)  # 4 superpixels: 14 coalitions are enumerated exactly
    base = torch.full_like(x, 0.5)

    def v(S):
        mask = torch.zeros(8, 8)
        for m in S:
            mask[seg == m] = 1
        with torch.no_grad():
            return net(base + mask * (x - base))[0, 2].double().item()

    M = 4
    phi = []
    for i in range(M):
        others = [j for j in range(M) if j != i]
        tot = 0.0
        for k in range(M):
            for S in itertools.combinations(others, k):
                wgt = math.factorial(k) * math.factorial(M - k - 1) / math.factorial(M)
                tot += wgt * (v(S + (i,)) - v(S))
        phi.append(tot)
    fit = KernelSHAP(net, segments="grid", n_segments=4, n_samples=100)(x, 2)
    got = torch.stack([fit[0][seg == m][0] for m in range(4)]).double()
    torch.testing.assert_close(got, torch.tensor(phi, dtype=torch.float64), rtol=1e-4, atol=1e-5)


def test_kernel_shap_sampled_efficiency_and_seed():
    net = SmallCNN(classes=4)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    ks = KernelSHAP(net, segments="grid", n_segments=16, n_samples=60, seed=3)
    fits = ks.explain(x, [0, 1])
    for b, f in enumerate(fits):
        with torch.no_grad():
            full = net(x[b:b + 1])[0, b].double()
            empty = net(torch.full_like(x[b:b + 1], 0.5))[0, b].double()
        torch.testing.assert_close(f.coefficients[0].sum(), full - empty)  # efficiency holds exactly
    again = KernelSHAP(net, segments="grid", n_segments=16, n_samples=60, seed=3)(x, [0, 1])
    torch.testing.assert_close(again, ks(x, [0, 1]))
    other = KernelSHAP(net, segments="grid", n_segments=16, n_samples=60, seed=4)(x, [0, 1])
    assert not torch.allclose(other, again)


def test_lime_slic_and_seed():
    pytest.importorskip("skimage")
    net = SmallCNN(classes=4)
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(6))
    x[:, :, :, 12:] *= 0.2  # two regions of different colour
    lime = LIME(net, segments="slic", n_segments=8, n_samples=50, seed=1)
    fit = lime.explain(x, 0)[0]
    assert fit.segments.shape == (24, 24) and fit.Z.shape == (50, int(fit.segments.max()) + 1)
    assert (fit.Z[0] == 1).all()
    a = lime(x, 0)
    torch.testing.assert_close(a, LIME(net, segments="slic", n_segments=8, n_samples=50, seed=1)(x, 0))


def test_superpixel_errors():
    net = SmallCNN()
    with pytest.raises(ValueError, match="segments must be 'grid', 'slic' or a Tensor"):
        LIME(net, segments="quickshift")
    with pytest.raises(ValueError, match=r"segments must be integer labels of shape \(H, W\) = \(8, 8\)"):
        LIME(net, segments=torch.zeros(4, 4, dtype=torch.long))(torch.rand(1, 3, 8, 8), 0)
    with pytest.raises(ValueError, match="n_samples must be an int >= 2"):
        KernelSHAP(net, n_samples=1)
    with pytest.raises(ValueError, match="window must be a positive int"):
        Occlusion(net, window=0)
