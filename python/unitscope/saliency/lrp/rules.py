"""The LRP rules, one small class each: how the relevance R of a layer's outputs is shared among its
inputs. A rule sees the layer as z = f(x; W) + b (a Conv2d/Linear, with any BatchNorm folded in),
calls f with modified weights and inputs and takes gradients of it (the "gradient trick")."""
from __future__ import annotations

import math

import torch


def stabilize(z, eps):
    """z + eps * sign(z), with sign(0) = +1: a denominator that is never 0 (zennit's convention)."""
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z)


def _check_eps(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _grads(outputs, inputs, grad_outputs):
    return torch.autograd.grad(outputs, inputs, grad_outputs)


def _leaves(*ts):
    return [t.detach().requires_grad_(True) for t in ts]


class Rule:
    """Base: `relevance(layer, x, R)` -> the relevance of x (same shape as x).

    `layer(x, weight, bias=None)` applies the module with `weight` (and adds `bias`); `layer.weight`
    and `layer.bias` are its (folded) parameters, `layer.bias` None when it has none."""

    def relevance(self, layer, x, R):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _bias(layer, keep, part=None):
    b = layer.bias if keep else None
    if b is None or part is None:
        return b
    return b.clamp(min=0) if part == "+" else b.clamp(max=0)


class Epsilon(Rule):
    """LRP-epsilon (Bach et al. 2015): R_i = x_i w_ij R_j / (z_j + eps sign(z_j)); epsilon=0 is LRP-0.

    bias=False leaves the bias out of z (zennit's zero_params=['bias']): relevance is then conserved."""

    def __init__(self, epsilon=1e-6, bias=True):
        self.epsilon = _check_eps(epsilon, "epsilon")
        self.bias = bool(bias)

    def relevance(self, layer, x, R):
        (x,) = _leaves(x)
        z = layer(x, layer.weight, _bias(layer, self.bias))
        (g,) = _grads(z, x, R / stabilize(z, self.epsilon))
        return x * g


class ZPlus(Rule):
    """z+ (Deep Taylor decomposition for ReLU layers, Montavon et al. 2017): only positive contributions
    x_i w_ij > 0 share R_j, i.e. alpha=1, beta=0. As in zennit, negative inputs are allowed (their
    contributions through negative weights count as positive) and the positive bias part enters z."""

    def __init__(self, stabilizer=1e-6, bias=True):
        self.stabilizer = _check_eps(stabilizer, "stabilizer")
        self.bias = bool(bias)

    def relevance(self, layer, x, R):
        xp, xn = _leaves(x.clamp(min=0), x.clamp(max=0))
        W = layer.weight
        z = layer(xp, W.clamp(min=0), _bias(layer, self.bias, "+")) + layer(xn, W.clamp(max=0))
        gp, gn = _grads(z, (xp, xn), R / stabilize(z, self.stabilizer))
        return xp * gp + xn * gn


class AlphaBeta(Rule):
    """alpha-beta (Bach et al. 2015): alpha times the share of the positive contributions minus beta
    times the share of the negative ones; alpha - beta = 1 keeps the total (alpha=2, beta=1 usual)."""

    def __init__(self, alpha=2.0, beta=1.0, stabilizer=1e-6, bias=True):
        self.alpha, self.beta = _check_eps(alpha, "alpha"), _check_eps(beta, "beta")
        if abs(self.alpha - self.beta - 1) > 1e-12:
            raise ValueError(f"alpha - beta must be 1 (relevance is conserved), got alpha={alpha!r}, beta={beta!r}")
        self.stabilizer = _check_eps(stabilizer, "stabilizer")
        self.bias = bool(bias)

    def relevance(self, layer, x, R):
        W = layer.weight
        Wp, Wn = W.clamp(min=0), W.clamp(max=0)
        out = 0
        for coef, part, (wx, wnx) in ((self.alpha, "+", (Wp, Wn)), (-self.beta, "-", (Wn, Wp))):
            if coef == 0:
                continue
            xp, xn = _leaves(x.clamp(min=0), x.clamp(max=0))
            z = layer(xp, wx, _bias(layer, self.bias, part)) + layer(xn, wnx)
            gp, gn = _grads(z, (xp, xn), R / stabilize(z, self.stabilizer))
            out = out + coef * (xp * gp + xn * gn)
        return out


class ZBox(Rule):
    """z^B (Montavon et al. 2017), for the input layer of pixels bounded by low <= x <= high:
    z_j = sum_i x_i w_ij - l_i w+_ij - h_i w-_ij, R_i = (x_i w_ij - l_i w+_ij - h_i w-_ij) R_j / z_j.

    low, high: numbers or tensors broadcastable to the layer's input, in the space of the x given to
    the LRP call (pixels): LRP maps them through its `preprocess` to the model's input space."""

    def __init__(self, low=0.0, high=1.0, stabilizer=1e-6):
        for name, v in (("low", low), ("high", high)):
            if isinstance(v, bool) or not isinstance(v, (int, float, torch.Tensor)):
                raise TypeError(f"{name} must be a number or a Tensor, got {type(v).__name__}")
        if not isinstance(low, torch.Tensor) and not isinstance(high, torch.Tensor) and not low < high:
            raise ValueError(f"low must be < high, got low={low!r}, high={high!r}")
        self.low, self.high = low, high
        self.stabilizer = _check_eps(stabilizer, "stabilizer")

    def relevance(self, layer, x, R):
        low = torch.as_tensor(self.low, dtype=x.dtype, device=x.device).expand_as(x)
        high = torch.as_tensor(self.high, dtype=x.dtype, device=x.device).expand_as(x)
        x, lo, hi = _leaves(x, low, high)
        W = layer.weight
        z = layer(x, W) - layer(lo, W.clamp(min=0)) - layer(hi, W.clamp(max=0))
        g, gl, gh = _grads(z, (x, lo, hi), R / stabilize(z, self.stabilizer))
        return x * g + lo * gl + hi * gh  # gl, gh carry the minus signs of z


class Gamma(Rule):
    """LRP-gamma (Montavon et al. 2019), in zennit's generalized form for inputs of either sign:
    positive contributions get their weights raised by gamma times their positive part (for outputs
    z > 0; the negative side mirrored for z < 0)."""

    def __init__(self, gamma=0.25, stabilizer=1e-6, bias=True):
        self.gamma = _check_eps(gamma, "gamma")
        self.stabilizer = _check_eps(stabilizer, "stabilizer")
        self.bias = bool(bias)

    def relevance(self, layer, x, R):
        W, g = layer.weight, self.gamma
        b = layer.bias if self.bias else None
        Wup, Wdown = W + g * W.clamp(min=0), W + g * W.clamp(max=0)
        bup = None if b is None else b + g * b.clamp(min=0)
        bdown = None if b is None else b + g * b.clamp(max=0)
        with torch.no_grad():
            sign = layer(x, W, b)
        out = 0
        for mask, (wp, bp, wn) in ((sign > 0, (Wup, bup, Wdown)), (sign < 0, (Wdown, bdown, Wup))):
            xp, xn = _leaves(x.clamp(min=0), x.clamp(max=0))
            z = layer(xp, wp, bp) + layer(xn, wn)
            gp, gn = _grads(z, (xp, xn), mask.to(R) * R / stabilize(z, self.stabilizer))
            out = out + xp * gp + xn * gn
        return out


class Flat(Rule):
    """Flat (Lapuschkin et al. 2019): R_j spread evenly over the receptive field of j, whatever the
    inputs and weights (all ones, no bias); for an input layer whose values carry no meaning."""

    def __init__(self, stabilizer=1e-6):
        self.stabilizer = _check_eps(stabilizer, "stabilizer")

    def relevance(self, layer, x, R):
        (ones,) = _leaves(torch.ones_like(x))
        z = layer(ones, torch.ones_like(layer.weight))
        (g,) = _grads(z, ones, R / stabilize(z, self.stabilizer))
        return g


class WSquare(Rule):
    """w^2 (Montavon et al. 2017): R_i = sum_j w_ij^2 / sum_i' w_i'j^2 R_j, input-independent
    (as zennit, the squared bias enters the denominator unless bias=False)."""

    def __init__(self, stabilizer=1e-6, bias=True):
        self.stabilizer = _check_eps(stabilizer, "stabilizer")
        self.bias = bool(bias)

    def relevance(self, layer, x, R):
        (ones,) = _leaves(torch.ones_like(x))
        b = layer.bias ** 2 if self.bias and layer.bias is not None else None
        z = layer(ones, layer.weight ** 2, b)
        (g,) = _grads(z, ones, R / stabilize(z, self.stabilizer))
        return g


RULES = (Epsilon, ZPlus, AlphaBeta, ZBox, Gamma, Flat, WSquare)
