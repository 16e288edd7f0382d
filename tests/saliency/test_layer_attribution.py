"""Layer attribution: LayerIntegratedGradients against Captum's LayerIntegratedGradients on a
VGG-style and a ResNet-style network (ReLU(inplace=False), as in test_neuron.py), its completeness,
and LayerLRP's relevance at a hidden layer: conservation, and zennit's relevance at the same layer
(zennit through the torchvision stand-in of peers.py)."""
import copy

import peers
import pytest
import torch
from test_lrp import images as lrp_images
from test_neuron import ARCHS, images
from tiny_models import VGGish

from unitscope.saliency import LRP, LayerIntegratedGradients, LayerLRP
from unitscope.saliency.lrp import Composite, Epsilon

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
    m = VGGish()
    m.unused = torch.nn.Conv2d(3, 3, 1)  # a module the forward never calls
    with pytest.raises(ValueError, match=r"layer 'unused' \(Conv2d\) was not called during the forward pass"):
        LayerIntegratedGradients(m, "unused", steps=4)(torch.rand(1, 3, 16, 16), 0)
    with pytest.raises(ValueError, match="method must be one of"):
        LayerIntegratedGradients(VGGish(), "features.8", method="simpson")


# ---- LayerLRP ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", ["features.2", "features.5", "features.8", "classifier.3"])
def test_layer_lrp_conserves_the_logit(layer):
    # a bias-free VGG with epsilon -> 0: nothing absorbs relevance, so each layer's relevance sums to
    # the explained logit, as the input relevance does
    m = VGGish(bias=False, bn=False).double()
    x = lrp_images()
    c = torch.tensor([[4, 1], [7, 2]])
    comp = Composite(Epsilon(1e-12, bias=False), Epsilon(1e-12, bias=False), stabilizer=1e-12)
    rel = LayerLRP(m, layer, comp)(x, c)
    with torch.no_grad():
        logit = m(x).gather(1, c)
    assert rel.shape[:2] == (2, 2) and rel.shape[2] == {"features.2": 8, "features.5": 8, "features.8": 16,
                                                        "classifier.3": 32}[layer]
    assert logit.abs().min() > 1e-4  # the tiny logits are small, not zero
    torch.testing.assert_close(rel.flatten(2).sum(2), logit, rtol=1e-6, atol=1e-9)
    inp = LRP(m, comp)(x, c)
    torch.testing.assert_close(rel.flatten(2).sum(2), inp.flatten(2).sum(2), rtol=1e-6, atol=1e-9)


def test_layer_lrp_conserves_on_a_resnet():
    # residual additions share relevance x_i / sum: the block outputs still carry the whole logit
    from test_lrp import EPSILON, resnet

    m = resnet(bn_stats=False)
    with torch.no_grad():
        m.fc.bias.zero_()
    x = lrp_images()
    c = torch.tensor([4, 7])
    with torch.no_grad():
        logit = m(x).gather(1, c[:, None])[:, 0]
    for layer in ("layer1", "layer2"):
        rel = LayerLRP(m, layer, EPSILON)(x, c)
        assert rel.dim() == 4
        torch.testing.assert_close(rel.flatten(1).sum(1), logit, rtol=1e-6, atol=1e-9)


def test_layer_lrp_with_bias_loses_relevance_on_the_way():
    # biases absorb relevance: the layer (nearer the output) keeps more of the logit than the input,
    # so the two sums differ (a layer relevance that were the input's would fail here)
    m = VGGish(bias=True, bn=True).double()
    x = lrp_images()
    layer_sum = LayerLRP(m, "features.8", "epsilon_plus")(x, 3).flatten(1).sum(1)
    input_sum = LRP(m, "epsilon_plus")(x, 3).flatten(1).sum(1)
    assert (layer_sum - input_sum).abs().min() > 1e-6 * layer_sum.abs().max()


@pytest.mark.parametrize("name", ["epsilon_plus", "epsilon_alpha2_beta1_flat"])
@pytest.mark.parametrize("layer", ["features.4", "features.8"])
def test_layer_lrp_same_as_zennit(name, layer):
    # zennit's rules hand relevance backward as the gradient between modules: the gradient at the
    # layer's output under zennit's composite is the relevance arriving there
    peers.zennit()
    from test_lrp import OURS, zennit_composite
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm

    m = VGGish().double()
    x = lrp_images()
    c = torch.tensor([3, 8])
    got = LayerLRP(m, layer, OURS[name])(x, c)
    zm = copy.deepcopy(m)
    comp = zennit_composite(name)
    comp.canonizers = [SequentialMergeBatchNorm()]
    seen = []

    def keep_grad(mod, inputs, out):
        out.register_hook(seen.append)  # returns None: the output is left as it is

    with Gradient(model=zm, composite=comp) as attributor:
        handle = zm.get_submodule(layer).register_forward_hook(keep_grad)
        onehot = torch.zeros(2, 10, dtype=x.dtype).scatter(1, c[:, None], 1.0)
        attributor(x, lambda out: out * onehot)
        handle.remove()
    (ref,) = seen
    assert got.abs().max() > 0 and got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_layer_lrp_bad_layer():
    with pytest.raises(ValueError, match="is not a module of the model"):
        LayerLRP(VGGish(), "features.99")
