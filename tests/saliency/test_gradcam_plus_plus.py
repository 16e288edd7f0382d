"""Grad-CAM++'s alpha against its closed form in float64: small gradients, g <= 0, and the poles of
1 / (2 + S g) on signed layers."""
import warnings

import numpy as np
import pytest
import torch
from tiny_models import GapNet

from unitscope.saliency import GradCAMPlusPlus


def closed_form_weights(A, grads):
    """Naive float64 loop: w[b, t, k] = sum_ij g^2 / (2 g^2 + S g^3) * relu(g) over the entries with g > 0."""
    A, grads = A.double().numpy(), grads.double().numpy()
    B, T, K = grads.shape[:3]
    w = np.zeros((B, T, K))
    for b in range(B):
        for k in range(K):
            S = A[b, k].sum()
            for t in range(T):
                for g in grads[b, t, k].ravel():
                    if g > 0:
                        w[b, t, k] += g ** 2 / (2 * g ** 2 + S * g ** 3) * g
    return torch.from_numpy(w)


@pytest.fixture
def method():
    return GradCAMPlusPlus(GapNet().eval(), "act", normalize=False)


@pytest.mark.parametrize("scale", [1.0, 1e-5, 1e-7])
def test_weights_match_the_closed_form_small_gradients(method, scale):
    gen = torch.Generator().manual_seed(0)
    A = torch.rand(2, 4, 5, 5, generator=gen) * 3  # non-negative layer: no pole
    grads = torch.randn(2, 3, 4, 5, 5, generator=gen) * scale
    got = method.weights(A, grads)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), closed_form_weights(A, grads), rtol=2e-7, atol=0)
    if scale <= 1e-7:  # alpha -> 1/2 as g -> 0 (S g < 1e-4 here): the weights are half the sum of the positive gradients
        half = 0.5 * grads.double().clamp(min=0).sum(dim=(3, 4))
        torch.testing.assert_close(got.double(), half, rtol=1e-4, atol=0)


def test_small_gradients_end_to_end():
    net = GapNet().eval()
    with torch.no_grad():
        net.fc.weight.mul_(1e-4)  # dS/dA = W / 25 ~ 1e-5
    x = torch.rand(2, 3, 10, 9, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        A = net.act(net.conv(x))
    c = torch.tensor([2, 0])
    g = (net.fc.weight.detach()[c] / 25)[:, None, :, None, None].expand(2, 1, 4, 5, 5)
    w = closed_form_weights(A, g)[:, 0]  # (B, K)
    expect = torch.relu(torch.einsum("bk,bkhw->bhw", w, A.double()))
    got = GradCAMPlusPlus(net, "act", upsample=False, normalize=False)(x, c)
    torch.testing.assert_close(got.double(), expect, rtol=1e-5, atol=1e-12)
    assert got.abs().max() > 1e-6  # not the map of a floored denominator (alpha = g^2 / 1e-7 ~ 1e-3)


def test_zero_and_negative_gradients_do_not_count(method):
    A = torch.rand(1, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    grads = torch.zeros(1, 1, 2, 3, 3)
    grads[0, 0, 0, 0, 0] = -2.0
    grads[0, 0, 1, 1, 1] = 0.25
    got = method.weights(A, grads)
    S1 = A[0, 1].double().sum()
    torch.testing.assert_close(got.double(), torch.tensor([[[0.0, 0.25 / (2 + S1 * 0.25)]]], dtype=torch.float64))


def test_poles_on_a_signed_layer(method):
    # channel sum S = -4 (a signed layer): the closed form 1 / (2 + S g) has its pole at g = 1/2
    A = torch.zeros(1, 1, 2, 2)
    A[0, 0] = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]])
    grads = torch.tensor([0.5, 0.25, 0.5 + 2 ** -10, 1.0]).view(1, 1, 1, 2, 2)
    # pole (alpha 0), before it (1 / (2 - 1) = 1), just past it (1 / (2 - 2 - 2^-8) = -256), past it (-1/2)
    expect = 0.0 + 1.0 * 0.25 + (-256.0) * (0.5 + 2 ** -10) + (-0.5) * 1.0
    with pytest.warns(UserWarning, match=r"'act': 2 \+ sum\(A\) g is <= 0 at 3 positive-gradient entries.*1 poles"):
        got = method.weights(A, grads)
    torch.testing.assert_close(got.double(), torch.tensor([[[expect]]], dtype=torch.float64))
    # eps widens the pole: |2 + S g| <= eps |S g| also drops the entry just past it (|d| = 2^-8, |S g| ~ 2)
    with pytest.warns(UserWarning, match="2 poles"):
        wide = GradCAMPlusPlus(GapNet().eval(), "act", eps=1e-2, normalize=False).weights(A, grads)
    torch.testing.assert_close(wide.double(), torch.tensor([[[0.25 - 0.5]]], dtype=torch.float64))


def test_non_negative_layer_does_not_warn(method):
    gen = torch.Generator().manual_seed(2)
    A, grads = torch.rand(1, 3, 4, 4, generator=gen), torch.randn(1, 2, 3, 4, 4, generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method.weights(A, grads)


@pytest.mark.parametrize("eps", [-1e-3, "1e-6", True, float("nan")])
def test_bad_eps(eps):
    with pytest.raises(ValueError, match="eps must be a number >= 0"):
        GradCAMPlusPlus(GapNet().eval(), "act", eps=eps, normalize=False)
