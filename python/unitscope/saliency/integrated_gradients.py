"""Integrated Gradients (Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks", ICML
2017): (x - x') times the path integral of the gradient along the straight line from a baseline x'."""
from __future__ import annotations

import numpy as np
import torch

from unitscope.saliency.base import Attribution, check_choice, check_input, check_positive_int, warn_if_training
from unitscope.saliency.baselines import check_baseline, make_baseline

RULES = ("riemann_trapezoid", "gauss_legendre", "riemann_left", "riemann_right", "riemann_middle", "captum_trapezoid")


def path_nodes(steps, method):
    """Quadrature nodes alpha in [0, 1] and weights (float64 numpy, each (steps,)); n = steps.

    riemann_trapezoid: alpha = 0, 1/(n-1), ..., 1 with the trapezoid rule's weights 1/(n-1), halved
        at both ends (n >= 2); they sum to 1.
    gauss_legendre: Gauss-Legendre nodes mapped from [-1, 1] to [0, 1]; exact for polynomial
        integrands of degree < 2 n, so it needs far fewer steps than Riemann sums.
    riemann_left / riemann_right / riemann_middle: weights 1/n at alpha = i/n, (i+1)/n, (i+1/2)/n
        for i = 0..n-1 (as Captum's methods of those names).
    captum_trapezoid: Captum's "riemann_trapezoid": alpha = 0, 1/(n-1), ..., 1 with weights 1/n
        halved at both ends (n >= 2); they sum to (n-1)/n, so the attributions are (n-1)/n times
        those of riemann_trapezoid.
    """
    if method in ("riemann_trapezoid", "captum_trapezoid"):
        check_positive_int(steps, "steps", minimum=2)
        alphas = np.linspace(0.0, 1.0, steps)
        w = np.full(steps, 1.0 / (steps - 1 if method == "riemann_trapezoid" else steps))
        w[0] /= 2
        w[-1] /= 2
        return alphas, w
    check_positive_int(steps, "steps")
    if method.startswith("riemann_"):
        shift = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
        return (np.arange(steps) + shift) / steps, np.full(steps, 1.0 / steps)
    nodes, w = np.polynomial.legendre.leggauss(steps)
    return (nodes + 1.0) / 2.0, w / 2.0


class IntegratedGradients(Attribution):
    """IG_i(x) = (x_i - x'_i) * integral_0^1 dS_c/dx_i (x' + a (x - x')) da, by quadrature.

    Args:
        baseline ("black" | "gray" | "blur" | "uniform" | "mean" | number | Tensor): x'; see
            baselines.make_baseline (input_range gives black/gray/uniform, default [0, 1] pixels).
        steps (int): quadrature nodes.
        method (str): the quadrature rule, "gauss_legendre" | "riemann_trapezoid" | "riemann_left" |
            "riemann_right" | "riemann_middle" | "captum_trapezoid"; see path_nodes.
        batch_size (int): path points per forward/backward pass (bounds memory).
        channel ("sum" | None): None keeps (B, C, H, W); "sum" gives (B, H, W). Both keep the
            completeness sum.
        seed (int): for the "uniform" baseline.
        compile ("auto" | True | False): see Attribution; default False (slower compiled on a CPU).

    Call: method(x, target, return_gap=False). With return_gap=True returns (attributions, gap)
    where gap (float64 Tensor[B] or [B, T]) = sum(attributions) - (S(x) - S(x')), the completeness
    error of the quadrature; attributions are float32/x.dtype, accumulated in float32.
    """

    compilable = True

    def __init__(self, model, *, baseline="black", steps=50, method="gauss_legendre", batch_size=32,
                 channel=None, input_range=(0.0, 1.0), seed=0, output=None, preprocess=None, compile=False):
        super().__init__(model, output=output, preprocess=preprocess, compile=compile)
        self.method = check_choice(method, RULES, "method")
        self.steps = steps
        self.alphas, self.weights = path_nodes(steps, method)
        self.baseline = baseline
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.channel = check_choice(channel, ("sum", None), "channel")
        self.input_range = input_range
        self.seed = seed
        check_baseline(baseline)

    def __call__(self, x, target=None, return_gap=False):
        x = check_input(x)
        warn_if_training(self.model)
        targets, squeeze = self.resolve_targets(x, target)
        attr, gap = self._integrate(x, targets)
        if self.channel == "sum":
            attr = attr.sum(dim=2)
        if squeeze:
            attr, gap = attr[:, 0], gap[:, 0]
        return (attr, gap) if return_gap else attr

    def make_baseline(self, x):
        gen = torch.Generator(device=x.device)
        gen.manual_seed(int(self.seed))
        return make_baseline(x, self.baseline, input_range=self.input_range, generator=gen)

    def _integrate(self, x, targets):
        B, T = targets.shape
        base = self.make_baseline(x.detach())
        delta = x.detach() - base
        S = len(self.alphas)
        alphas = torch.tensor(self.alphas, dtype=x.dtype, device=x.device)
        wts = torch.tensor(self.weights, dtype=torch.float32, device=x.device)
        attr = torch.zeros((B, T) + x.shape[1:], dtype=torch.float32, device=x.device)
        # path point p = (image b, target t, node s) at flat index (b * T + t) * S + s
        n = B * T * S
        for start, stop in self.batches(n, self.batch_size):
            p = torch.arange(start, stop, device=x.device)
            b, t, s = p // (T * S), (p // S) % T, p % S
            pts = base[b] + alphas[s].view(-1, 1, 1, 1) * delta[b]
            g = self.gradient(pts, targets[b, t]).float() * wts[s].view(-1, 1, 1, 1)
            acc = torch.zeros((B * T,) + x.shape[1:], dtype=torch.float32, device=x.device)
            acc.index_add_(0, b * T + t, g)
            attr += acc.view(attr.shape)
        attr = (attr * delta[:, None].float()).to(x.dtype)
        with torch.no_grad():
            # single no-grad passes stay eager: through the compiled forward they would cost a second
            # graph (torch.compile specializes on grad mode)
            s_x = self.scores(x.detach(), eager=True).double().gather(1, targets)
            s_b = self.scores(base, eager=True).double().gather(1, targets)
        gap = attr.double().sum(dim=(2, 3, 4)) - (s_x - s_b)
        return attr, gap
