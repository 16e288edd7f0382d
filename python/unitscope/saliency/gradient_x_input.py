"""Gradient times input (Shrikumar et al., "Not Just a Black Box", 2016): x * dS_c/dx, a first-order
Taylor decomposition of the score around zero."""
from __future__ import annotations

from unitscope.saliency.base import CHANNEL_REDUCTIONS, REDUCTIONS, Attribution, check_choice, per_target, reduce_map


class GradientTimesInput(Attribution):
    """x * dS_c/dx.

    Args:
        reduce, channel: as VanillaGradient; defaults "signed" and "sum" (the contribution of
            each pixel summed over its channels, (B, H, W)).

    Returns float Tensor (B, H, W), or (B, C, H, W) with channel=None.
    """

    compilable = True

    def __init__(self, model, *, reduce="signed", channel="sum", output=None, preprocess=None):
        super().__init__(model, output=output, preprocess=preprocess)
        self.reduce = check_choice(reduce, REDUCTIONS, "reduce")
        self.channel = check_choice(channel, CHANNEL_REDUCTIONS, "channel")

    def raw(self, x, target):
        """x * gradient, (B, C, H, W), before any reduction."""
        return x * self.gradient(x, target)

    def _attribute(self, x, targets):
        return per_target(lambda xx, t: reduce_map(self.raw(xx, t), self.reduce, self.channel), x, targets)
