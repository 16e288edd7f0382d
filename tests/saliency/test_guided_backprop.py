"""Guided backprop against the map computed by hand on small MLPs, and the functional-activation check."""
import pytest
import torch
from tiny_models import MLP, FunctionalReLU, SEGate, SmallCNN, TinyResNet
from torch import nn

from unitscope.saliency import GuidedBackprop


def hand_guided(m, x, c, deriv):
    """relu'(z) * max(grad, 0) at each activation, plain matrix algebra."""
    W1, W2, W3 = m.l1.weight.detach(), m.l2.weight.detach(), m.l3.weight.detach()
    z1 = x.flatten(1) @ W1.T + m.l1.bias.detach()
    h1 = m.act1(z1.clone())
    z2 = h1 @ W2.T + m.l2.bias.detach()
    g = W3[c].expand(x.shape[0], -1)
    g = g.clamp(min=0) * deriv(z2)
    g = g @ W2
    g = g.clamp(min=0) * deriv(z1)
    return (g @ W1).view_as(x)


@pytest.mark.parametrize("act,deriv", [
    (nn.ReLU, lambda z: (z > 0).float()),
    (lambda: nn.ReLU(inplace=True), lambda z: (z > 0).float()),
    (nn.ReLU6, lambda z: ((z > 0) & (z < 6)).float()),
    (lambda: nn.ReLU6(inplace=True), lambda z: ((z > 0) & (z < 6)).float()),
    (lambda: nn.LeakyReLU(0.1), lambda z: torch.where(z > 0, 1.0, 0.1)),
    (nn.Sigmoid, lambda z: torch.sigmoid(z) * (1 - torch.sigmoid(z))),
])
@pytest.mark.parametrize("reuse", [False, True])
def test_guided_by_hand(act, deriv, reuse):
    m = MLP(act=act, reuse=reuse).eval()
    x = 3 * torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(2))  # some z beyond 6 for ReLU6
    got = GuidedBackprop(m)(x, 1)
    torch.testing.assert_close(got, hand_guided(m, x, 1, deriv), rtol=1e-5, atol=1e-6)
    # differs from the plain gradient (the positive-gradient rule matters on this model)
    xg = x.clone().requires_grad_(True)
    m(xg)[:, 1].sum().backward()
    assert not torch.allclose(got, xg.grad)


def test_guided_reduce_and_hooks_removed():
    m = MLP().eval()
    x = torch.randn(2, 3, 4, 4)
    raw = GuidedBackprop(m)(x, 0)
    torch.testing.assert_close(GuidedBackprop(m, reduce="abs", channel="max")(x, 0), raw.abs().amax(1))
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    assert not torch._C._is_torch_function_mode_enabled()


@pytest.mark.parametrize("kind,name", [("F.relu", "relu"), ("torch.relu", "relu"), ("method", "relu"),
                                       ("F.gelu", "gelu")])
def test_functional_activation_is_refused(kind, name):
    m = FunctionalReLU(kind).eval()
    with pytest.raises(ValueError, match=rf"cannot hook functional activations; found: {name} in '<model>'"):
        GuidedBackprop(m)(torch.rand(1, 3, 5, 5), 0)
    assert all(not mod._forward_hooks for mod in m.modules())
    assert not torch._C._is_torch_function_mode_enabled()
    # opting out of the check on a model with nothing to hook is refused too
    with pytest.raises(ValueError, match="no activation module to hook"):
        GuidedBackprop(m, check_functional=False, activations=(nn.ReLU,))


def test_functional_inside_submodule_is_named():
    class Block(nn.Module):
        def forward(self, x):
            return torch.relu(x)

    m = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), Block(), nn.Flatten(), nn.Linear(2 * 9, 2)).eval()
    with pytest.raises(ValueError, match=r"relu in '2'"):
        GuidedBackprop(m)(torch.rand(1, 3, 3, 3), 0)


def test_non_monotone_module_refused_unless_listed():
    m = SmallCNN(act=nn.SiLU)
    with pytest.raises(ValueError, match=r"non-monotone ones: features.2 \(SiLU\)"):
        GuidedBackprop(m)
    g = GuidedBackprop(m, activations=(nn.SiLU,))(torch.rand(1, 3, 8, 8), 0)
    assert g.shape == (1, 3, 8, 8) and torch.isfinite(g).all()


def test_sigmoid_gate_accepted_and_resnet_inplace():
    x = torch.rand(2, 3, 8, 8)
    g = GuidedBackprop(SEGate().eval())(x, 1)
    assert g.shape == x.shape and g.abs().sum() > 0
    r = TinyResNet()
    xr = torch.rand(2, 3, 32, 32)
    g = GuidedBackprop(r)(xr, [3, 4])
    assert g.shape == xr.shape and torch.isfinite(g).all() and g.abs().sum() > 0
    # the model itself still computes the same logits afterwards (hooks gone, in-place ReLUs intact)
    with torch.no_grad():
        before = r(xr)
    GuidedBackprop(r)(xr, 0)
    with torch.no_grad():
        torch.testing.assert_close(r(xr), before)
