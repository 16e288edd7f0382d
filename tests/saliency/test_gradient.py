"""Gradient family against maps computed by hand on a linear model, SmoothGrad and IG properties."""
import math

import numpy as np
import pytest
import torch
from tiny_models import Linear, SmallCNN

from unitscope.saliency import GradientTimesInput, IntegratedGradients, SmoothGrad, VanillaGradient
from unitscope.saliency.baselines import gaussian_blur, make_baseline
from unitscope.saliency.integrated_gradients import path_nodes


@pytest.fixture
def lin():
    return Linear().eval()


@pytest.fixture
def x():
    return torch.rand(2, 3, 6, 5, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("reduce", ["abs", "signed", "positive", "negative"])
@pytest.mark.parametrize("channel", ["max", "sum", None])
def test_vanilla_gradient_by_hand(lin, x, reduce, channel):
    g = torch.stack([lin.w(1), lin.w(3)])  # targets 1 and 3
    r = {"abs": g.abs(), "signed": g, "positive": g.clamp(min=0), "negative": (-g).clamp(min=0)}[reduce]
    expected = {"max": r.amax(1), "sum": r.sum(1), None: r}[channel]
    got = VanillaGradient(lin, reduce=reduce, channel=channel)(x, target=[1, 3])
    torch.testing.assert_close(got, expected)


def test_negative_is_size_of_negative_part(lin, x):
    got = VanillaGradient(lin, reduce="negative", channel=None)(x, 2)
    w = lin.w(2)
    assert (got >= 0).all()
    torch.testing.assert_close(got[0], torch.where(w < 0, -w, torch.zeros_like(w)))


def test_gradient_times_input_by_hand(lin, x):
    got = GradientTimesInput(lin)(x, 0)
    torch.testing.assert_close(got, (x * lin.w(0)).sum(1))
    raw = GradientTimesInput(lin, channel=None, reduce="abs")(x, 0)
    torch.testing.assert_close(raw, (x * lin.w(0)).abs())


def test_gradient_differentiable_when_x_requires_grad():
    m = SmallCNN()
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    g = VanillaGradient(m, reduce="signed", channel="sum")(x, 2)
    assert g.requires_grad
    g.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_softmax_and_callable_output(lin, x):
    with torch.no_grad():
        p = torch.softmax(lin(x), 1)
    # d softmax_c / dx = p_c (w_c - sum_j p_j w_j)
    W = lin.fc.weight.detach()
    expect = (p[:, 1:2] * (W[1][None] - p @ W)).view(2, 3, 6, 5)
    got = VanillaGradient(lin, reduce="signed", channel=None, output="softmax")(x, 1)
    torch.testing.assert_close(got, expect)
    got2 = VanillaGradient(lin, reduce="signed", channel=None, output=lambda o: 3 * o)(x, 1)
    torch.testing.assert_close(got2, 3 * lin.w(1).expand(2, -1, -1, -1))


def test_preprocess_is_inside_the_graph(lin, x):
    got = VanillaGradient(lin, reduce="signed", channel=None, preprocess=lambda t: (t - 0.5) / 0.25)(x, 0)
    torch.testing.assert_close(got, 4 * lin.w(0).expand(2, -1, -1, -1))


@pytest.mark.parametrize("inner", ["vanilla", "gxi"])
def test_smoothgrad_zero_noise_equals_base(inner):
    m = SmallCNN()
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    base = VanillaGradient(m) if inner == "vanilla" else GradientTimesInput(m, channel=None)
    sg = SmoothGrad(base, n_samples=4, noise=0.0, batch_size=5)  # chunks straddle images
    torch.testing.assert_close(sg(x, [0, 1, 2]), base(x, [0, 1, 2]), rtol=1e-6, atol=1e-7)


def test_smoothgrad_noise_seeded_and_mean_of_noisy_maps(lin):
    # the linear model's gradient does not depend on x: with abs/max the mean equals the map itself
    x = torch.rand(2, 3, 6, 5)
    base = VanillaGradient(lin)
    torch.testing.assert_close(SmoothGrad(base, 5, 0.3, batch_size=3)(x, 1), base(x, 1))
    m = SmallCNN()
    xs = torch.rand(2, 3, 8, 8)
    a = SmoothGrad(VanillaGradient(m), 6, 0.2, batch_size=4, seed=7)(xs, 0)
    b = SmoothGrad(VanillaGradient(m), 6, 0.2, batch_size=6, seed=7)(xs, 0)
    c = SmoothGrad(VanillaGradient(m), 6, 0.2, batch_size=4, seed=8)(xs, 0)
    torch.testing.assert_close(a, b)  # same noise whatever the batch size
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, VanillaGradient(m)(xs, 0))


def test_smoothgrad_bad_arguments(lin):
    with pytest.raises(TypeError, match="method must be a unitscope.saliency method"):
        SmoothGrad(lin)
    with pytest.raises(ValueError, match="noise must be a finite number >= 0"):
        SmoothGrad(VanillaGradient(lin), noise=-1)
    with pytest.raises(ValueError, match="n_samples must be an int >= 1"):
        SmoothGrad(VanillaGradient(lin), n_samples=0)


def test_quadrature_nodes():
    a, w = path_nodes(5, "riemann_trapezoid")
    np.testing.assert_allclose(a, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(w, [0.125, 0.25, 0.25, 0.25, 0.125])
    a, w = path_nodes(8, "gauss_legendre")
    assert math.isclose(w.sum(), 1.0) and (0 < a).all() and (a < 1).all()
    # exact for a degree-15 polynomial
    assert math.isclose((w * a ** 15).sum(), 1 / 16, rel_tol=1e-12)
    with pytest.raises(ValueError, match="steps must be an int >= 2"):
        path_nodes(1, "riemann_trapezoid")


@pytest.mark.parametrize("baseline", ["black", "gray", "uniform", "blur", 0.2])
def test_ig_linear_model_exact(lin, x, baseline):
    ig = IntegratedGradients(lin, baseline=baseline, steps=3, method="riemann_trapezoid", batch_size=4)
    attr, gap = ig(x, [0, 2], return_gap=True)
    base = ig.make_baseline(x)
    expect = torch.stack([(x[0] - base[0]) * lin.w(0), (x[1] - base[1]) * lin.w(2)])
    torch.testing.assert_close(attr, expect, rtol=1e-5, atol=1e-6)
    assert gap.abs().max() < 1e-4


def test_ig_tensor_baseline_and_channel_sum(lin, x):
    b = torch.full((3, 1, 1), 0.3)
    attr = IntegratedGradients(lin, baseline=b, steps=2, method="riemann_trapezoid", channel="sum")(x, 1)
    torch.testing.assert_close(attr, ((x - 0.3) * lin.w(1)).sum(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rule,steps,tol", [("gauss_legendre", 32, 1e-4), ("riemann_trapezoid", 400, 2e-3)])
def test_ig_completeness_nonlinear(rule, steps, tol):
    m = SmallCNN(act=torch.nn.Softplus)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    attr, gap = IntegratedGradients(m, steps=steps, method=rule, batch_size=64)(x, [1, 4], return_gap=True)
    with torch.no_grad():
        d = m(x).gather(1, torch.tensor([[1], [4]]))[:, 0] - m(torch.zeros_like(x)).gather(1, torch.tensor([[1], [4]]))[:, 0]
    assert attr.shape == x.shape
    torch.testing.assert_close(attr.double().sum(dim=(1, 2, 3)) - d.double(), gap)
    assert (gap.abs() / d.abs()).max() < tol


def test_ig_bad_arguments(lin):
    with pytest.raises(ValueError, match="method must be one of"):
        IntegratedGradients(lin, method="simpson")
    with pytest.raises(ValueError, match="baseline must be one of"):
        IntegratedGradients(lin, baseline="pink")
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        IntegratedGradients(lin, batch_size=0)
    with pytest.raises(ValueError, match="does not broadcast"):
        IntegratedGradients(lin, baseline=torch.zeros(2, 2))(torch.rand(1, 3, 6, 5), 0)


def test_baselines():
    x = torch.rand(2, 3, 9, 7)
    assert (make_baseline(x, "black") == 0).all() and (make_baseline(x, "gray") == 0.5).all()
    assert (make_baseline(x, "gray", input_range=(-1, 1)) == 0).all()
    torch.testing.assert_close(make_baseline(x, "mean")[:, :, 4, 3], x.mean(dim=(2, 3)))
    u = make_baseline(x, "uniform", generator=torch.Generator().manual_seed(0))
    assert u.shape == x.shape and 0 <= u.min() and u.max() <= 1
    # blur keeps a constant image and the mean of a smooth one; sigma 0 is the identity
    c = torch.full((1, 1, 6, 6), 0.7)
    torch.testing.assert_close(gaussian_blur(c, 2.0), c)
    torch.testing.assert_close(gaussian_blur(x, 0), x)
    assert make_baseline(x, "blur").std() < x.std()
