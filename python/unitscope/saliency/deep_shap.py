"""DeepSHAP (Lundberg & Lee 2017; Captum's DeepLiftShap): DeepLIFT (Rescale) averaged over a
distribution of baselines, one DeepLIFT pass per baseline."""
from __future__ import annotations

import torch

from unitscope.saliency.base import CHANNEL_REDUCTIONS, REDUCTIONS, Attribution, check_choice, per_target, reduce_map
from unitscope.saliency.deeplift import DeepLift


class DeepSHAP(Attribution):
    """Mean over the N baselines of DeepLift(x, x'_k).

    Args:
        model, output, preprocess, eps: see DeepLift.
        baselines (Tensor (N, C, H, W)): the baseline distribution (e.g. a few training images).
        reduce, channel: as VanillaGradient; defaults "signed", None (the raw (B, C, H, W) map).

    The map sums to f(x) - mean_k f(x'_k) in networks where DeepLIFT sums to the difference.
    """

    def __init__(self, model, baselines, *, eps=1e-10, reduce="signed", channel=None, output=None, preprocess=None):
        super().__init__(model, output=output, preprocess=preprocess)
        if not isinstance(baselines, torch.Tensor) or baselines.dim() != 4 or baselines.shape[0] < 1:
            got = tuple(baselines.shape) if isinstance(baselines, torch.Tensor) else type(baselines).__name__
            raise ValueError(f"baselines must be a Tensor (N, C, H, W) with N >= 1, got {got}")
        self.baselines = baselines
        self.deeplift = DeepLift(model, eps=eps, output=output, preprocess=preprocess)
        self.reduce = check_choice(reduce, REDUCTIONS, "reduce")
        self.channel = check_choice(channel, CHANNEL_REDUCTIONS, "channel")

    def raw(self, x, target):
        if tuple(self.baselines.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"baselines must have the shape of one image {tuple(x.shape[1:])}, got "
                             f"{tuple(self.baselines.shape[1:])}")
        bases = self.baselines.to(x.device, x.dtype)
        total = 0
        for k in range(bases.shape[0]):
            total = total + self.deeplift.raw(x, target, base=bases[k:k + 1].expand_as(x))
        return total / bases.shape[0]

    def _attribute(self, x, targets):
        return per_target(lambda xx, t: reduce_map(self.raw(xx, t), self.reduce, self.channel), x, targets)
