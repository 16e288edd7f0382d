"""LRP: the rules by hand on a small MLP, relevance conservation, agreement with zennit's composites
on a VGG-style and a ResNet-style network (zennit imported through the torchvision stand-in of
peers.py, see its docstring), and the refusals (a module or function with no rule, a free BatchNorm).
The ReLUs here are in-place (as in torchvision); LRP and zennit both handle that without a capture."""
import copy

import peers
import pytest
import torch
from tiny_models import MLP, FunctionalReLU, SEGate, TinyResNet, VGGish
from torch import nn

from unitscope.saliency.lrp import (
    LRP,
    AlphaBeta,
    Composite,
    DeepTaylor,
    Epsilon,
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    Flat,
    ZBox,
    ZPlus,
)


def resnet(seed=0, bn_stats=True):
    m = TinyResNet(width=4, seed=seed)
    if bn_stats:
        g = torch.Generator().manual_seed(seed)
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                with torch.no_grad():
                    bn.running_mean.copy_(torch.rand(bn.num_features, generator=g) * 0.4 - 0.2)
                    bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
                    bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
                    bn.bias.copy_(torch.rand(bn.num_features, generator=g) * 0.4 - 0.2)
    return m.double().eval()


def images(n=2, size=32, seed=3):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---- the rules by hand ------------------------------------------------------------------------------
def test_rules_by_hand_on_an_mlp():
    m = MLP(shape=(3, 2, 2), hidden=(5, 4), classes=3).double().eval()
    x = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    W1, b1 = m.l1.weight.detach(), m.l1.bias.detach()
    W2, b2 = m.l2.weight.detach(), m.l2.bias.detach()
    W3, b3 = m.l3.weight.detach(), m.l3.bias.detach()
    c = torch.tensor([0, 2])

    def eps_rule(a, W, b, R, eps=1e-6):  # R_i = sum_j a_i w_ji R_j / (z_j + eps sign z_j)
        z = a @ W.T + b
        return a * ((R / (z + eps * torch.where(z >= 0, 1.0, -1.0))) @ W)

    def zplus_rule(a, W, b, R, eps=1e-6):
        ap, an = a.clamp(min=0), a.clamp(max=0)
        Wp, Wn = W.clamp(min=0), W.clamp(max=0)
        z = ap @ Wp.T + an @ Wn.T + b.clamp(min=0)
        s = R / (z + eps * torch.where(z >= 0, 1.0, -1.0))
        return ap * (s @ Wp) + an * (s @ Wn)

    def flat_rule(a, W, R, eps=1e-6):
        z = torch.full_like(R, W.shape[1])
        return (R / (z + eps)) @ torch.ones_like(W)

    a0 = x.flatten(1)
    a1 = torch.relu(a0 @ W1.T + b1)
    a2 = torch.relu(a1 @ W2.T + b2)
    out = a2 @ W3.T + b3
    R3 = torch.zeros_like(out).scatter(1, c[:, None], out.gather(1, c[:, None]))
    R2 = eps_rule(a2, W3, b3, R3)
    expect_eps = eps_rule(a0, W1, b1, eps_rule(a1, W2, b2, R2))
    got = LRP(m, Composite(conv=ZPlus(), linear=Epsilon()))(x, c)
    torch.testing.assert_close(got, expect_eps.view_as(x), rtol=1e-9, atol=1e-12)
    expect_flat = flat_rule(a0, W1, zplus_rule(a1, W2, b2, R2))
    got = LRP(m, Composite(conv=ZPlus(), linear=ZPlus(), first=Flat()))(x, c)
    R2z = zplus_rule(a2, W3, b3, R3)
    expect_flat = flat_rule(a0, W1, zplus_rule(a1, W2, b2, R2z))
    torch.testing.assert_close(got, expect_flat.view_as(x), rtol=1e-9, atol=1e-12)
    # z^B at the input, bounds [-1, 2]: R_i = (x_i w_ji - l w+_ji - h w-_ji) R_j / z_j
    R1 = zplus_rule(a1, W2, b2, R2z)
    Wp, Wn = W1.clamp(min=0), W1.clamp(max=0)
    z = a0 @ W1.T - (-1.0) * Wp.sum(1) - 2.0 * Wn.sum(1)
    s = R1 / (z + 1e-6 * torch.where(z >= 0, 1.0, -1.0))
    expect_box = a0 * (s @ W1) - (-1.0) * (s @ Wp) - 2.0 * (s @ Wn)
    got = LRP(m, Composite(conv=ZPlus(), linear=ZPlus(), first=ZBox(-1.0, 2.0)))(x, c)
    torch.testing.assert_close(got, expect_box.view_as(x), rtol=1e-9, atol=1e-12)


# ---- conservation -----------------------------------------------------------------------------------
TINY = {"stabilizer": 1e-12, "bias": False}  # a stabilizer far below the activations (1e-6 moves 1e-3 of them)


EPSILON = Composite(Epsilon(1e-12, bias=False), Epsilon(1e-12, bias=False), stabilizer=1e-12)


@pytest.mark.parametrize("composite,arch", [
    (EpsilonPlus(epsilon=1e-12, **TINY), "vgg"), (EpsilonPlusFlat(epsilon=1e-12, **TINY), "vgg"),
    (DeepTaylor(**TINY), "vgg"), (EPSILON, "vgg"), (EPSILON, "resnet")])
def test_relevance_sums_to_the_logit(composite, arch):
    # z+ conserves where every layer is followed by a ReLU (VGG): in a residual block the second
    # convolution's units feed the addition directly, and a unit with no positive contribution
    # (z+ = 0) keeps its relevance to itself under z+, as in zennit
    # bias-free networks (no biases, BatchNorm with zero mean and shift): nothing absorbs relevance
    m = VGGish(bias=False, bn=False).double() if arch == "vgg" else resnet(bn_stats=False)
    if arch == "resnet":
        with torch.no_grad():
            m.fc.bias.zero_()
    x = images()
    c = torch.tensor([4, 7])
    rel = LRP(m, composite)(x, c)
    with torch.no_grad():
        logit = m(x).gather(1, c[:, None])[:, 0]
    torch.testing.assert_close(rel.flatten(1).sum(1), logit, rtol=1e-6, atol=1e-9)
    # the residual additions share relevance (x_i / sum): a plain gradient would count it twice
    assert (rel.flatten(1).sum(1) - logit).abs().max() < 1e-6 * logit.abs().max()


def test_biases_absorb_relevance():
    m = VGGish().double()
    x = images()
    rel = LRP(m, "epsilon_plus")(x, 1)
    with torch.no_grad():
        logit = m(x)[:, 1]
    assert not torch.allclose(rel.flatten(1).sum(1), logit, rtol=1e-3)


# ---- against zennit ---------------------------------------------------------------------------------
def zennit_relevance(model, composite, x, c, canonizers):
    return zennit_relevance_n(model, composite, x, c, canonizers, classes=10)


def zennit_relevance_n(model, composite, x, c, canonizers, classes):
    peers.zennit()
    from zennit.attribution import Gradient

    model = copy.deepcopy(model)
    composite.canonizers = canonizers
    with Gradient(model=model, composite=composite) as attributor:
        onehot = torch.zeros(x.shape[0], classes, dtype=x.dtype).scatter(1, c[:, None], 1.0)
        _, rel = attributor(x, lambda out: out * onehot)
    return rel


def zennit_composite(name):
    peers.zennit()
    import zennit.composites as zc
    from zennit import rules as zr
    from zennit.types import Convolution

    if name == "deep_taylor":
        return zc.SpecialFirstLayerMapComposite(
            layer_map=zc.layer_map_base() + [(Convolution, zr.ZPlus()), (nn.Linear, zr.ZPlus())],
            first_map=[(Convolution, zr.ZBox(low=-0.5, high=1.5))])
    if name == "epsilon_gamma_box":
        return zc.EpsilonGammaBox(low=-0.5, high=1.5)
    return {"epsilon_plus": zc.EpsilonPlus, "epsilon_plus_flat": zc.EpsilonPlusFlat,
            "epsilon_alpha2_beta1": zc.EpsilonAlpha2Beta1, "epsilon_alpha2_beta1_flat": zc.EpsilonAlpha2Beta1Flat}[name]()


OURS = {"epsilon_plus": EpsilonPlus(), "epsilon_plus_flat": EpsilonPlusFlat(),
        "epsilon_alpha2_beta1": EpsilonAlpha2Beta1(), "epsilon_alpha2_beta1_flat": EpsilonAlpha2Beta1Flat(),
        "epsilon_gamma_box": EpsilonGammaBox(low=-0.5, high=1.5), "deep_taylor": DeepTaylor(low=-0.5, high=1.5)}


@pytest.mark.parametrize("name", list(OURS))
@pytest.mark.parametrize("arch", ["vgg", "resnet"])
def test_same_relevance_as_zennit(name, arch):
    peers.zennit()
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer

    m = VGGish().double() if arch == "vgg" else resnet()
    canon = [SequentialMergeBatchNorm()] if arch == "vgg" else [ResNetCanonizer()]
    x = images()
    c = torch.tensor([3, 8])
    ref = zennit_relevance(m, zennit_composite(name), x, c, canon)
    got = LRP(m, OURS[name])(x, c)
    assert got.abs().max() > 0
    # zennit's folded BatchNorm keeps its eps (x / sqrt(1 + eps) per BN): a relative 1e-5 at most here
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    # and the model is left as it was: no hooks
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())


def test_zennit_without_its_resnet_canonizer_counts_the_skip_twice():
    # zennit needs the addition as a module (its canonizer); without it the gradient copies the relevance
    peers.zennit()
    from zennit.canonizers import SequentialMergeBatchNorm

    m = resnet(bn_stats=False)
    with torch.no_grad():
        m.fc.bias.zero_()
    x = images()
    c = torch.tensor([3, 8])
    peers.zennit()
    import zennit.composites as zc
    from zennit.rules import Epsilon as ZEpsilon
    from zennit.types import Convolution

    eps = zc.LayerMapComposite(zc.layer_map_base(1e-12) + [(Convolution, ZEpsilon(1e-12)), (nn.Linear, ZEpsilon(1e-12))])
    plain = zennit_relevance(m, eps, x, c, [SequentialMergeBatchNorm()])
    ours = LRP(m, EPSILON)(x, c)
    with torch.no_grad():
        logit = m(x).gather(1, c[:, None])[:, 0]
    assert not torch.allclose(plain.flatten(1).sum(1), logit, rtol=1e-2)
    torch.testing.assert_close(ours.flatten(1).sum(1), logit, rtol=1e-6, atol=1e-9)


def test_preprocess_maps_the_box_bounds():
    # LRP(preprocess=normalize) with pixel bounds [0, 1] == LRP on normalized input with mapped bounds
    m = VGGish().double()
    mean = torch.tensor([0.4, 0.5, 0.6], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3], dtype=torch.float64).view(1, 3, 1, 1)
    x = images()
    got = LRP(m, DeepTaylor(0.0, 1.0), preprocess=lambda t: (t - mean) / std)(x, 2)
    box = ZBox((0 - mean) / std, (1 - mean) / std)
    expect = LRP(m, Composite(ZPlus(), ZPlus(), first=box))((x - mean) / std, 2)
    torch.testing.assert_close(got, expect, rtol=1e-10, atol=1e-12)


# ---- refusals ---------------------------------------------------------------------------------------
def test_module_without_rule_is_named():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"LRP has no rule for the module\(s\) 1 \(GELU\)"):
        LRP(m)


@pytest.mark.parametrize("model,match", [
    (FunctionalReLU("F.gelu"), r"no rule for gelu called on activations in the forward code of '<model>'"),
    (SEGate(), r"no rule for sigmoid called on activations in the forward code of '<model>'"),
])
def test_function_without_rule_is_named(model, match):
    model.eval()
    with pytest.raises(ValueError, match=match):
        LRP(model)(torch.rand(1, 3, 6, 6), 0)
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in model.modules())


def test_functional_relu_and_mean_get_rules():
    # FunctionalReLU's F.relu passes relevance on, its .mean(dim=(2, 3)) shares it: conserved
    m = FunctionalReLU("F.relu").double().eval()
    with torch.no_grad():
        m.conv.bias.zero_()
        m.fc.bias.zero_()
    x = images(size=6)
    rel = LRP(m, EpsilonPlus(epsilon=1e-12, **TINY))(x, 1)
    with torch.no_grad():
        torch.testing.assert_close(rel.flatten(1).sum(1), m(x)[:, 1], rtol=1e-6, atol=1e-9)


def test_free_batchnorm_is_refused():
    m = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(4, 2)).eval()
    with pytest.raises(ValueError, match=r"'0' \(BatchNorm2d\) does not take such a layer's output directly"):
        LRP(m)(torch.rand(1, 3, 5, 5), 0)


def test_bad_arguments():
    m = VGGish()
    with pytest.raises(ValueError, match="output must be 'logits' for LRP"):
        LRP(m, output="softmax")
    with pytest.raises(ValueError, match="composite must be a Composite or one of 'epsilon_plus'"):
        LRP(m, "epsilon")
    with pytest.raises(ValueError, match="alpha - beta must be 1"):
        AlphaBeta(1.0, 1.0)
    with pytest.raises(ValueError, match="epsilon must be a finite number >= 0, got -1"):
        Epsilon(-1)
    with pytest.raises(TypeError, match="first must be an LRP rule"):
        Composite(ZPlus(), Epsilon(), first="flat")
    with pytest.raises(ValueError, match="low must be < high"):
        ZBox(1.0, 0.0)
    with pytest.raises(ValueError, match=r"target classes must lie in \[0, 10\)"):
        LRP(m)(torch.rand(1, 3, 8, 8), 10)


def test_batch_and_targets_are_independent():
    m = resnet()
    x = images(3)
    lrp = LRP(m, "epsilon_plus_flat")
    both = lrp(x, torch.tensor([[1, 2], [3, 4], [5, 6]]))
    assert both.shape == (3, 2, 3, 32, 32)
    torch.testing.assert_close(both[1, 1], lrp(x[1:2], 4)[0])


# ---- EfficientNet-Lite0 -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_same_relevance_as_zennit_on_efficientnet_lite0(name):
    peers.zennit()
    pytest.importorskip("efficientnet_lite_pytorch")
    import zennit.composites as zc

    from unitscope import models

    lm = models.load("efficientnet_lite0")
    m = copy.deepcopy(lm.model).eval()  # float32: float64 convolutions run 50x slower on CPU
    for bn in m.modules():  # the same function with eps in running_var: zennit's merged BN keeps its eps
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_var += bn.eps
            bn.eps = 0.0
    x = lm.preprocess(images(1, 48).float())  # the model's input space: zennit knows no preprocess
    lo, hi = lm.preprocess(torch.zeros(1, 3, 1, 1)), lm.preprocess(torch.ones(1, 3, 1, 1))
    c = torch.tensor([285])
    if name == "epsilon_gamma_box":
        ours, theirs = EpsilonGammaBox(low=lo, high=hi), zc.EpsilonGammaBox(low=lo, high=hi)
    else:
        ours, theirs = EpsilonPlusFlat(), zc.EpsilonPlusFlat()
    ref = zennit_relevance_n(m, theirs, x, c, peers.zennit_efficientnet_canonizers(m), classes=1000)
    got = LRP(m, ours)(x, c)
    assert got.abs().max() > 0
    # float32 through 49 layers: the same sums in another order differ in the last bits (float64: 1e-23)
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())
