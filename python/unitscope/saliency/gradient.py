"""Vanilla gradient saliency (Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks",
ICLR workshop 2014): the gradient of the class score with respect to the input pixels."""
from __future__ import annotations

from unitscope.saliency.base import CHANNEL_REDUCTIONS, REDUCTIONS, Attribution, check_choice, per_target, reduce_map


class VanillaGradient(Attribution):
    """dS_c / dx, reduced for display.

    Args:
        model, output, preprocess: see Attribution.
        reduce ("abs" | "signed" | "positive" | "negative"): |g|, g, max(g, 0) or max(-g, 0).
        channel ("max" | "sum" | None): reduce over colour channels to (B, H, W); None keeps
            the raw (B, C, H, W). The paper takes the max of |g| over channels (the defaults).

    Returns float Tensor (B, H, W) or (B, C, H, W) (with a T axis after B for (B, T) targets).
    """

    compilable = True

    def __init__(self, model, *, reduce="abs", channel="max", output=None, preprocess=None):
        super().__init__(model, output=output, preprocess=preprocess)
        self.reduce = check_choice(reduce, REDUCTIONS, "reduce")
        self.channel = check_choice(channel, CHANNEL_REDUCTIONS, "channel")

    def raw(self, x, target):
        """The unreduced map (B, C, H, W) for target (B,); what SmoothGrad averages."""
        return self.gradient(x, target)

    def _attribute(self, x, targets):
        return per_target(lambda xx, t: reduce_map(self.raw(xx, t), self.reduce, self.channel), x, targets)
