"""Composites: which LRP rule each layer gets, by type (Conv2d, Linear) and position (the first
Conv2d/Linear of the forward pass, which sees the input). Names follow zennit's composites."""
from __future__ import annotations

from torch import nn

from unitscope.saliency.lrp.rules import AlphaBeta, Epsilon, Flat, Gamma, Rule, ZBox, ZPlus, _check_eps


class Composite:
    """Rules by layer: `conv` for every nn.Conv2d, `linear` for every nn.Linear, and `first` (if
    given) instead of those for the first Conv2d/Linear called in the forward pass.

    stabilizer: the epsilon of the rule every average pooling, mean and residual addition gets
    (zennit's Norm rule: each input's share of the output, x_i R / z).

    Pooling and activations are not configurable: ReLU/ReLU6 pass the relevance on unchanged,
    max pooling gives it to the maximum (its gradient), average pooling/means and residual additions
    share it in proportion to the inputs (x_i / sum x).
    """

    def __init__(self, conv, linear, first=None, stabilizer=1e-6):
        for name, r in (("conv", conv), ("linear", linear), ("first", first)):
            if not isinstance(r, Rule) and not (name == "first" and r is None):
                raise TypeError(f"{name} must be an LRP rule (e.g. unitscope.saliency.lrp.Epsilon()), got {r!r}")
        self.conv, self.linear, self.first = conv, linear, first
        self.stabilizer = _check_eps(stabilizer, "stabilizer")

    def rule_for(self, module, first=False):
        if first and self.first is not None:
            return self.first
        return self.conv if isinstance(module, nn.Conv2d) else self.linear

    def __repr__(self):
        return f"{type(self).__name__}(conv={self.conv!r}, linear={self.linear!r}, first={self.first!r})"


class EpsilonPlus(Composite):
    """zennit's EpsilonPlus: z+ on convolutions, epsilon on linear layers."""

    def __init__(self, epsilon=1e-6, stabilizer=1e-6, bias=True):
        super().__init__(ZPlus(stabilizer, bias), Epsilon(epsilon, bias), None, stabilizer)


class EpsilonPlusFlat(Composite):
    """zennit's EpsilonPlusFlat: EpsilonPlus with the flat rule on the first layer."""

    def __init__(self, epsilon=1e-6, stabilizer=1e-6, bias=True):
        super().__init__(ZPlus(stabilizer, bias), Epsilon(epsilon, bias), Flat(stabilizer), stabilizer)


class EpsilonAlpha2Beta1(Composite):
    """zennit's EpsilonAlpha2Beta1: alpha=2, beta=1 on convolutions, epsilon on linear layers."""

    def __init__(self, epsilon=1e-6, stabilizer=1e-6, bias=True):
        super().__init__(AlphaBeta(2.0, 1.0, stabilizer, bias), Epsilon(epsilon, bias), None, stabilizer)


class EpsilonAlpha2Beta1Flat(Composite):
    """zennit's EpsilonAlpha2Beta1Flat: EpsilonAlpha2Beta1 with the flat rule on the first layer."""

    def __init__(self, epsilon=1e-6, stabilizer=1e-6, bias=True):
        super().__init__(AlphaBeta(2.0, 1.0, stabilizer, bias), Epsilon(epsilon, bias), Flat(stabilizer), stabilizer)


class EpsilonGammaBox(Composite):
    """zennit's EpsilonGammaBox: z^B (bounds low, high) on the first layer, gamma on convolutions,
    epsilon on linear layers. low/high are in the space of the x given to the LRP call (pixels)."""

    def __init__(self, low=0.0, high=1.0, epsilon=1e-6, gamma=0.25, stabilizer=1e-6, bias=True):
        super().__init__(Gamma(gamma, stabilizer, bias), Epsilon(epsilon, bias), ZBox(low, high, stabilizer),
                         stabilizer)


class DeepTaylor(Composite):
    """Deep Taylor decomposition (Montavon et al. 2017) for ReLU networks on bounded pixels: z^B on
    the first layer, z+ on every other convolution and linear layer (no zennit composite of this name:
    zennit's EpsilonPlus keeps epsilon on the linear layers)."""

    def __init__(self, low=0.0, high=1.0, stabilizer=1e-6, bias=True):
        super().__init__(ZPlus(stabilizer, bias), ZPlus(stabilizer, bias), ZBox(low, high, stabilizer), stabilizer)


COMPOSITES = {"epsilon_plus": EpsilonPlus, "epsilon_plus_flat": EpsilonPlusFlat,
              "epsilon_alpha2_beta1": EpsilonAlpha2Beta1, "epsilon_alpha2_beta1_flat": EpsilonAlpha2Beta1Flat,
              "epsilon_gamma_box": EpsilonGammaBox, "deep_taylor": DeepTaylor}


def make_composite(composite):
    """A Composite, or the name of a built-in one (COMPOSITES, default arguments)."""
    if isinstance(composite, Composite):
        return composite
    if isinstance(composite, str) and composite in COMPOSITES:
        return COMPOSITES[composite]()
    raise ValueError(f"composite must be a Composite or one of {', '.join(repr(k) for k in COMPOSITES)}; "
                     f"got {composite!r}")
