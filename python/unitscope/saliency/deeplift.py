"""DeepLIFT with the Rescale rule (Shrikumar et al., ICML 2017): (x - x') times the gradient in which
every nonlinear module's derivative is replaced by its secant Δy / Δx between the input and the
baseline (linear layers, BatchNorm in eval, average pooling and additions keep their own weights)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unitscope.saliency.base import CHANNEL_REDUCTIONS, REDUCTIONS, Attribution, check_choice, per_target, reduce_map
from unitscope.saliency.baselines import check_baseline, make_baseline

# elementwise nonlinear modules that get the Rescale multiplier (Captum's DeepLift list, less Softmax)
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.SELU, nn.CELU,
               nn.GELU, nn.SiLU, nn.Hardtanh)
POOLING = (nn.MaxPool2d,)


class _Multiplier(torch.autograd.Function):
    """Forward: the module's output (computed already). Backward: `rule(grad, x)` -> grad of x."""

    @staticmethod
    def forward(ctx, rule, value, x):
        ctx.rule = rule
        ctx.save_for_backward(x)
        return value.detach().clone()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            return None, None, ctx.rule(g, x).detach()


def _secant_or_grad(module, x, g, dx, num, eps):
    """num / dx where |dx| >= eps; the module's own gradient (g f'(x)) where |dx| < eps."""
    small = dx.abs() < eps
    out = num / torch.where(small, 1, dx)
    if small.any():  # the gradient pass only where some entry needs it
        xi = x.detach().requires_grad_(True)
        (d,) = torch.autograd.grad(module(xi.clone()), xi, g)  # clone: the module may work in place
        out = torch.where(small, d, out)
    return out


def _elementwise_rule(module, x0, y0, eps):
    def rule(g, x):
        with torch.no_grad():
            dx = x - x0
            dy = module(x.clone()) - y0
        return _secant_or_grad(module, x, g, dx, g * dy, eps)
    return rule


def _maxpool_rule(module, x0, y0, eps):
    """Rescale for max pooling: Δy = y - y' split between the input's and the baseline's maxima,
    max(y, y') - y' to the input's argmax, y - max(y, y') to the baseline's, then divided by Δx. The
    shares are added up where overlapping windows share an argmax (Captum's unpooling keeps one)."""
    kw = dict(kernel_size=module.kernel_size, stride=module.stride, padding=module.padding,
              dilation=module.dilation, ceil_mode=module.ceil_mode)

    def rule(g, x):
        with torch.no_grad():
            y, idx = F.max_pool2d(x, return_indices=True, **kw)
            _, idx0 = F.max_pool2d(x0, return_indices=True, **kw)
            top = torch.maximum(y, y0)
            up = torch.zeros_like(x).flatten(2)
            up.scatter_add_(2, idx.flatten(2), (g * (top - y0)).flatten(2))
            up.scatter_add_(2, idx0.flatten(2), (g * (y - top)).flatten(2))
            up = up.view_as(x)
            dx = x - x0
        return _secant_or_grad(module, x, g, dx, up, eps)
    return rule


class DeepLift(Attribution):
    """DeepLIFT (Rescale) relative to a baseline.

    Args:
        model, output, preprocess: see Attribution; the multipliers are taken through preprocess
            too (it is linear for the usual normalizations).
        baseline: as IntegratedGradients ("black" default, "gray", "blur", a number or a Tensor
            broadcasting to x).
        eps (float): below |Δx| < eps a module keeps its own gradient (Captum's 1e-10).
        reduce, channel: as VanillaGradient; defaults "signed", None (the raw (B, C, H, W) map).

    The nonlinear modules are the ELEMENTWISE activations (ReLU, ReLU6, ELU, LeakyReLU, Sigmoid,
    Tanh, GELU, SiLU, ...; Captum leaves ReLU6, GELU, SiLU, Hardtanh, SELU, CELU to their gradient)
    and MaxPool2d. Like Captum, DeepLIFT sees modules only: an activation written as a function
    (F.relu) keeps its plain gradient. The map sums to f(x) - f(x') exactly (summation-to-delta) in
    a network of these modules, linear layers, BatchNorm, average pooling and additions; Captum's
    does not when a max pooling has no nonlinear module after it (it drops the baseline's share)
    or overlapping windows (3x3, stride 2) share a maximum.
    """

    def __init__(self, model, *, baseline="black", eps=1e-10, reduce="signed", channel=None, output=None,
                 preprocess=None):
        super().__init__(model, output=output, preprocess=preprocess)
        self.baseline = check_baseline(baseline)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        self.eps = float(eps)
        self.reduce = check_choice(reduce, REDUCTIONS, "reduce")
        self.channel = check_choice(channel, CHANNEL_REDUCTIONS, "channel")
        self.modules = [m for m in model.modules() if isinstance(m, ELEMENTWISE + POOLING)]
        if not self.modules:
            raise ValueError("DeepLIFT found no nonlinear module (ReLU, ..., MaxPool2d) in the model: its map would "
                             "be the gradient times (x - baseline)")

    def raw(self, x, target, base=None):
        """(x - x') * the DeepLIFT multipliers, (B, C, H, W), for target (B,)."""
        base = make_baseline(x.detach(), self.baseline) if base is None else base
        refs = []  # (input, output) of each nonlinear module call in the baseline's pass, in call order

        def record_in(module, inputs):
            refs.append(inputs[0].detach().clone())  # before an in-place activation overwrites it

        def record(module, inputs, output):
            refs[-1] = (refs[-1], output.detach().clone())

        calls = []

        def pre(module, inputs):
            calls.append(inputs[0])
            return (inputs[0].clone(),)  # an in-place activation must not overwrite its input

        def post(module, inputs, output):
            x_in = calls.pop()
            x0, y0 = refs[self._step]
            self._step += 1
            make = _maxpool_rule if isinstance(module, POOLING) else _elementwise_rule
            return _Multiplier.apply(make(module, x0, y0, self.eps), output, x_in)

        handles = [h for m in self.modules for h in (m.register_forward_pre_hook(record_in),
                                                     m.register_forward_hook(record))]
        try:
            with torch.no_grad():
                self.scores(base, eager=True)
        finally:
            for h in handles:
                h.remove()
        self._step = 0
        xi = x.detach().requires_grad_(True)
        handles = [h for m in self.modules for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
        try:
            with torch.enable_grad():
                s = self.scores(xi, eager=True)
        finally:
            for h in handles:
                h.remove()
        if self._step != len(refs):
            raise ValueError(f"the model ran its nonlinear modules {len(refs)} times for the baseline and {self._step} "
                             f"times for x: DeepLIFT needs the same path for both")
        self._check_target_range(s, target[:, None])
        with torch.enable_grad():
            (g,) = torch.autograd.grad(s.gather(1, target[:, None]).sum(), xi)
        return (x - base) * g

    def _attribute(self, x, targets):
        return per_target(lambda xx, t: reduce_map(self.raw(xx, t), self.reduce, self.channel), x, targets)
