"""Layer and neuron attribution against Captum's LayerGradientXActivation, NeuronGradient and
NeuronIntegratedGradients on a VGG-style and a ResNet-style network (ReLU(inplace=False): Captum's
layer hooks read the module output, which an in-place ReLU after it would overwrite), and neuron LRP
conserving the unit's activation."""
import pytest
import torch
from tiny_models import TinyResNet, VGGish
from torch import nn

from unitscope.saliency import IntegratedGradients, LayerGradientXActivation, NeuronModel, VanillaGradient
from unitscope.saliency.lrp import LRP, Composite, Epsilon

C = pytest.importorskip("captum.attr")


def resnet():
    m = TinyResNet(width=4).double()
    for mod in m.modules():
        if isinstance(mod, nn.ReLU):
            mod.inplace = False
    return m.eval()


ARCHS = {"vgg": (lambda: VGGish(inplace=False).double(), "features.8"), "resnet": (resnet, "layer2")}


def images(n=2, size=32):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(4), dtype=torch.float64)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_layer_gradient_x_activation_same_as_captum(arch):
    build, layer = ARCHS[arch]
    m = build()
    x = images()
    c = torch.tensor([2, 7])
    got = LayerGradientXActivation(m, layer)(x, c)
    ref = C.LayerGradientXActivation(m, m.get_submodule(layer)).attribute(x, target=c)
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_neuron_gradient_and_ig_same_as_captum(arch):
    build, layer = ARCHS[arch]
    m = build()
    x = images()
    mod = m.get_submodule(layer)
    got = VanillaGradient(NeuronModel(m, layer, (3, 2, 1)), reduce="signed", channel=None)(x, 0)
    ref = C.NeuronGradient(m, mod).attribute(x, neuron_selector=(3, 2, 1))
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-12)
    # a whole channel (mean over its locations), Captum's callable selector
    got = IntegratedGradients(NeuronModel(m, layer, 3), baseline=0.0, steps=16, method="gauss_legendre")(x, 0)
    ref = C.NeuronIntegratedGradients(m, mod).attribute(x, neuron_selector=lambda out: out[:, 3].mean(dim=(1, 2)),
                                                        baselines=torch.zeros_like(x), n_steps=16)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-8)  # Gauss-Legendre nodes to ~1e-7 relative


def test_neuron_lrp_conserves_the_activation():
    # a bias-free VGG: the relevance of the unit's mean activation sums to that activation
    m = VGGish(bias=False, bn=False).double()
    x = images()
    tiny = Epsilon(1e-12, bias=False)
    rel = LRP(NeuronModel(m, "features.8", 5), Composite(tiny, tiny, stabilizer=1e-12))(x, 0)
    with torch.no_grad():
        act = m.features[:9](x)[:, 5].mean(dim=(1, 2))
    assert act.abs().min() > 0
    torch.testing.assert_close(rel.flatten(1).sum(1), act, rtol=1e-6, atol=1e-12)


def test_bad_units():
    m = VGGish()
    with pytest.raises(TypeError, match=r"unit must be a channel int k or a tuple \(k, i, j\), got \(1, 2\)"):
        NeuronModel(m, "features.8", (1, 2))
    with pytest.raises(ValueError, match=r"unit channel must lie in \[0, 16\) for layer 'features.8', got 16"):
        NeuronModel(m, "features.8", 16)(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="is not a module of the model"):
        NeuronModel(m, "features.99", 0)
