"""GradientSHAP (Lundberg & Lee 2017; Captum's GradientShap): the expected gradient times (x - x')
over baselines x' drawn from a distribution, points on the straight line x' + a (x - x') with
a ~ U(0, 1), and optional Gaussian noise on x, estimated from n_samples draws per image."""
from __future__ import annotations

import torch

from unitscope.saliency.base import (
    CHANNEL_REDUCTIONS,
    REDUCTIONS,
    Attribution,
    batched,
    check_choice,
    check_positive_int,
    per_target,
    reduce_map,
)
from unitscope.saliency.baselines import check_baseline, make_baseline


def gradient_shap_from_samples(gradient, x, target, baselines, index, noise, alphas, batch_size=32):
    """The GradientSHAP estimate for given draws: x (B, ...), target (B,), baselines (N, ...), index
    (B n,) rows of baselines, noise (B n, ...) added to x, alphas (B n,) in [0, 1]; sample s of image
    b is row b n + s (Captum's order). gradient(points, targets) -> d score / d points.
    Returns (B, ...): the mean over the n samples of (x + noise - x'_index) * gradient at the point."""
    B = x.shape[0]
    n = index.shape[0] // B
    out = torch.zeros((B * n,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    for start, stop in batched(B * n, batch_size):
        rows = torch.arange(start, stop, device=x.device)
        xs = x[rows // n] + noise[start:stop]
        base = baselines[index[start:stop]]
        a = alphas[start:stop].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        g = gradient(base + a * (xs - base), target[rows // n])
        out[start:stop] = (xs - base) * g
    return out.view(B, n, *x.shape[1:]).mean(dim=1)


class GradientSHAP(Attribution):
    """GradientSHAP.

    Args:
        model, output, preprocess: see Attribution.
        baselines (Tensor (N, C, H, W), or a baseline name/number as IntegratedGradients): the
            distribution the baselines are drawn from (uniformly, with replacement); default "black"
            (then it is expected gradients on the black image's line, Captum needs a Tensor).
        n_samples (int): draws per image (Captum's default 5).
        stdev (float): standard deviation of the Gaussian noise added to x (Captum's default 0).
        batch_size (int): points per forward/backward pass. seed (int): the draws' generator.
        reduce, channel: as VanillaGradient; defaults "signed", None (the raw (B, C, H, W) map).

    Captum draws from numpy's and torch's global generators; unitscope from its own torch.Generator
    seeded by `seed`, so the same seed gives the same map on every call. With the same draws both
    give the same numbers (tests/saliency/test_deeplift_shap.py replays Captum's draws).
    """

    def __init__(self, model, *, baselines="black", n_samples=5, stdev=0.0, batch_size=32, seed=0,
                 reduce="signed", channel=None, output=None, preprocess=None):
        super().__init__(model, output=output, preprocess=preprocess)
        if not isinstance(baselines, torch.Tensor):
            check_baseline(baselines)
        elif baselines.dim() != 4 or baselines.shape[0] < 1:
            raise ValueError(f"baselines must be a Tensor (N, C, H, W) with N >= 1, got shape {tuple(baselines.shape)}")
        self.baselines = baselines
        self.n_samples = check_positive_int(n_samples, "n_samples")
        if isinstance(stdev, bool) or not isinstance(stdev, (int, float)) or not stdev >= 0:
            raise ValueError(f"stdev must be a number >= 0, got {stdev!r}")
        self.stdev = float(stdev)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.seed = seed
        self.reduce = check_choice(reduce, REDUCTIONS, "reduce")
        self.channel = check_choice(channel, CHANNEL_REDUCTIONS, "channel")

    def raw(self, x, target):
        """The unreduced estimate (B, C, H, W) for target (B,)."""
        if isinstance(self.baselines, torch.Tensor):
            if tuple(self.baselines.shape[1:]) != tuple(x.shape[1:]):
                raise ValueError(f"baselines must have the shape of one image {tuple(x.shape[1:])}, got "
                                 f"{tuple(self.baselines.shape[1:])}")
            bases = self.baselines.to(x.device, x.dtype)
        else:
            bases = make_baseline(x[:1].detach(), self.baselines)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        B, n = x.shape[0], self.n_samples
        index = torch.randint(bases.shape[0], (B * n,), generator=gen).to(x.device)
        noise = (torch.randn((B * n,) + tuple(x.shape[1:]), generator=gen, dtype=x.dtype) * self.stdev).to(x.device)
        alphas = torch.rand(B * n, generator=gen, dtype=torch.float64).to(x.device)
        return gradient_shap_from_samples(lambda p, t: self.gradient(p.detach(), t), x.detach(), target, bases,
                                          index, noise, alphas, self.batch_size)

    def _attribute(self, x, targets):
        return per_target(lambda xx, t: reduce_map(self.raw(xx, t), self.reduce, self.channel), x, targets)
