"""Layer attribution: LayerIntegratedGradients against Captum's LayerIntegratedGradients on a
VGG-style and a ResNet-style network (ReLU(inplace=False), as in test_neuron.py), its completeness,
and LayerLRP's relevance at a hidden layer (conservation)."""
import pytest
import torch
from test_neuron import ARCHS, images
from tiny_models import VGGish

from unitscope.saliency import LayerIntegratedGradients

C = pytest.importorskip("captum.attr")


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("ours,theirs", [("gauss_legendre", "gausslegendre"),
                                         ("captum_trapezoid", "riemann_trapezoid"),
                                         ("riemann_middle", "riemann_middle")])
def test_layer_ig_same_as_captum(arch, ours, theirs):
    build, layer = ARCHS[arch]
    m = build()
    x = images()
    c = torch.tensor([2, 7])
    lig = LayerIntegratedGradients(m, layer, baseline=0.25, steps=12, method=ours, batch_size=7)
    got = lig(x, c)
    ref = C.LayerIntegratedGradients(m, m.get_submodule(layer)).attribute(
        x, baselines=torch.full_like(x, 0.25), target=c, n_steps=12, method=theirs)
    assert got.shape == ref.shape == lig.layer_output(x).shape  # (B, K, h, w)
    tol = 1e-5 if ours == "gauss_legendre" else 1e-8  # Captum's Gauss-Legendre nodes to ~1e-7 relative
    torch.testing.assert_close(got, ref, rtol=tol, atol=1e-10)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("method,steps,tol", [("gauss_legendre", 256, 5e-3), ("riemann_trapezoid", 2000, 1e-3)])
def test_layer_ig_completeness(arch, method, steps, tol):
    # the ReLU kinks along the path make the integrand only piecewise smooth: quadrature converges
    # slowly (VGG: Gauss-Legendre 32 nodes 1.3e-2, 256 nodes 3.8e-3; trapezoid 2000 nodes 1.0e-4)
    build, layer = ARCHS[arch]
    m = build()
    x = images()
    c = torch.tensor([[1, 3], [0, 9]])  # two targets per image
    lig = LayerIntegratedGradients(m, layer, baseline="black", steps=steps, method=method, batch_size=500)
    attr, gap = lig(x, c, return_gap=True)
    with torch.no_grad():
        diff = (m(x) - m(torch.zeros_like(x))).gather(1, c)
    assert attr.shape[:2] == (2, 2)
    scale = float(diff.abs().max())
    assert scale > 1e-5  # a real difference is shared out, not 0 == 0 (the tiny logits are small)
    torch.testing.assert_close(attr.flatten(2).sum(2), diff, rtol=tol, atol=tol * scale)
    torch.testing.assert_close(gap, attr.double().flatten(2).sum(2) - diff, rtol=0, atol=1e-9)


def test_layer_ig_bad_layer():
    with pytest.raises(ValueError, match="is not a module of the model"):
        LayerIntegratedGradients(VGGish(), "features.99")
    with pytest.raises(ValueError, match="method must be one of"):
        LayerIntegratedGradients(VGGish(), "features.8", method="simpson")
