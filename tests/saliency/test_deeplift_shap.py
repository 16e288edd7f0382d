"""DeepLIFT (Rescale), DeepSHAP and GradientSHAP against Captum's DeepLift, DeepLiftShap and
GradientShap on a VGG-style and a ResNet-style network, same baselines; GradientSHAP with Captum's own
random draws replayed (Captum draws from numpy's and torch's global generators). Captum keeps one
input per module object and does not take in-place activations, so the networks compared with it
use separate ReLU modules with inplace=False; unitscope gives the same map with in-place ReLUs.
The networks compared with Captum's DeepLIFT pool by averaging: with max pooling (and ReLU6)
Captum's map does not sum to f(x) - f(x'), unitscope's does (test_where_captum_drops_relevance)."""
import numpy as np
import pytest
import torch
from tiny_models import VGGish
from torch import nn

from unitscope.saliency import DeepLift, DeepSHAP, GradientSHAP
from unitscope.saliency.gradient_shap import gradient_shap_from_samples

C = pytest.importorskip("captum.attr")


class Block(nn.Module):
    def __init__(self, c, inplace):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu1, self.relu2 = nn.ReLU(inplace=inplace), nn.ReLU(inplace=inplace)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        out += x
        return self.relu2(out)


class ResNetish(nn.Module):
    """stem conv-BN-ReLU-pool, two residual blocks (in-place addition), global average pool, fc."""

    def __init__(self, inplace=False, seed=0, pool=None):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=inplace),
                                  pool or nn.AvgPool2d(2))
        self.blocks = nn.Sequential(Block(8, inplace), Block(8, inplace))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                with torch.no_grad():
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
        self.eval()

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def vgg(inplace):
    """VGGish with average instead of max pooling and its ReLU6 made a ReLU (see the module notes)."""
    m = VGGish(inplace=inplace).double()
    m.features[5] = nn.AvgPool2d(2)
    m.features[11] = nn.ReLU(inplace=inplace)
    return m


ARCHS = {"vgg": vgg, "resnet": lambda inplace: ResNetish(inplace=inplace).double()}


def images(n=2, size=16, seed=3):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_deeplift_same_as_captum_and_sums_to_delta(arch):
    m = ARCHS[arch](False)
    x = images()
    base = torch.full_like(x[:1], 0.3).expand_as(x).clone()
    c = torch.tensor([2, 5])
    got = DeepLift(m, baseline=0.3)(x, c)
    ref = C.DeepLift(m).attribute(x, baselines=base, target=c)
    torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-10)
    with torch.no_grad():
        delta = (m(x) - m(base)).gather(1, c[:, None])[:, 0]
    torch.testing.assert_close(got.flatten(1).sum(1), delta, rtol=1e-9, atol=1e-12)
    # not the plain gradient times (x - x'): the multipliers matter here
    xi = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(m(xi).gather(1, c[:, None]).sum(), xi)
    assert not torch.allclose(got, (x - base) * g, rtol=1e-3)
    # in-place ReLUs: the same map; max pooling (the ResNet stem's 3x3 stride 2): still the exact delta
    torch.testing.assert_close(DeepLift(ARCHS[arch](True), baseline=0.3)(x, c), got, rtol=1e-9, atol=1e-12)
    if arch == "resnet":
        mp = ResNetish(inplace=True, pool=nn.MaxPool2d(3, 2, 1)).double()
        with torch.no_grad():
            delta = (mp(x) - mp(base)).gather(1, c[:, None])[:, 0]
        torch.testing.assert_close(DeepLift(mp, baseline=0.3)(x, c).flatten(1).sum(1), delta, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_deepshap_same_as_captum(arch):
    m = ARCHS[arch](False)
    x = images()
    bases = images(3, seed=9) * 0.5
    c = torch.tensor([1, 7])
    got = DeepSHAP(m, bases)(x, c)
    ref = C.DeepLiftShap(m).attribute(x, baselines=bases, target=c)
    torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-10)
    with torch.no_grad():
        delta = (m(x) - m(bases).mean(0, keepdim=True)).gather(1, c[:, None])[:, 0]
    torch.testing.assert_close(got.flatten(1).sum(1), delta, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_gradient_shap_replays_captums_draws(arch):
    m = ARCHS[arch](False)
    x = images()
    bases = images(4, seed=11)
    c = torch.tensor([3, 8])
    n, sd = 6, 0.1
    np.random.seed(0)
    torch.manual_seed(0)
    ref = C.GradientShap(m).attribute(x, baselines=bases, target=c, n_samples=n, stdevs=sd)
    # Captum's draws, in its order: baseline rows (numpy), the noise (torch.normal), the alphas (numpy)
    np.random.seed(0)
    torch.manual_seed(0)
    index = torch.tensor(np.random.choice(bases.shape[0], n * 2))
    noise = torch.normal(0, torch.tensor(sd).repeat((2 * n, 3, 16, 16)))  # float32, as Captum draws it
    alphas = torch.tensor(np.random.uniform(0.0, 1.0, 2 * n))
    gs = GradientSHAP(m, baselines=bases, n_samples=n, stdev=sd)
    got = gradient_shap_from_samples(lambda p, t: gs.gradient(p, t), x, c, bases, index, noise, alphas, batch_size=5)
    torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-10)
    # the method itself: its own seeded draws, the same on every call, another seed another estimate
    a = gs(x, c)
    torch.testing.assert_close(a, gs(x, c))
    assert not torch.allclose(a, GradientSHAP(m, baselines=bases, n_samples=n, stdev=sd, seed=1)(x, c))


def test_gradient_shap_is_expected_gradients_on_a_linear_model():
    # f linear: every gradient is W_c, so the estimate is W_c * (x - mean of the drawn baselines)
    m = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).double().eval()
    x = images(1, 4)
    bases = images(2, 4, seed=5)
    W = m[1].weight.detach()[2].view(1, 3, 4, 4)
    got = GradientSHAP(m, baselines=bases[:1], n_samples=3)(x, 2)
    torch.testing.assert_close(got, W * (x - bases[:1]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layers", [
    lambda: [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU6()],                         # Captum: ReLU6 keeps its gradient
    lambda: [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1)],   # overlapping windows
    lambda: [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)],         # max pooling
    lambda: [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()],
])
def test_where_captum_drops_relevance(layers):
    torch.manual_seed(0)  # the weights (made here, not at collection: they must not depend on test order)
    m = nn.Sequential(*layers(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)).double().eval()
    x = images(2, 8)
    base = torch.full_like(x, 0.3)
    c = torch.tensor([1, 2])
    with torch.no_grad():
        delta = (m(x) - m(base)).gather(1, c[:, None])[:, 0]
    torch.testing.assert_close(DeepLift(m, baseline=0.3)(x, c).flatten(1).sum(1), delta, rtol=1e-9, atol=1e-12)
    ref = C.DeepLift(m).attribute(x, baselines=base, target=c)
    assert not torch.allclose(ref.flatten(1).sum(1), delta, rtol=1e-3)


def test_bad_arguments():
    m = VGGish()
    with pytest.raises(ValueError, match="DeepLIFT found no nonlinear module"):
        DeepLift(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="eps must be a number >= 0, got -1"):
        DeepLift(m, eps=-1)
    with pytest.raises(ValueError, match="baselines must be a Tensor \\(N, C, H, W\\) with N >= 1, got list"):
        DeepSHAP(m, [0.0])
    with pytest.raises(ValueError, match="n_samples must be an int >= 1, got 0"):
        GradientSHAP(m, n_samples=0)
    with pytest.raises(ValueError, match="stdev must be a number >= 0, got -0.5"):
        GradientSHAP(m, stdev=-0.5)
    with pytest.raises(ValueError, match=r"baselines must have the shape of one image \(3, 8, 8\), got \(3, 4, 4\)"):
        GradientSHAP(m, baselines=torch.zeros(2, 3, 4, 4))(torch.rand(1, 3, 8, 8), 0)
