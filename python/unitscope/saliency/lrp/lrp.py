"""Layer-wise relevance propagation (Bach et al. 2015) with Deep Taylor rules (Montavon et al. 2017):
the explained logit is shared out layer by layer down to the pixels by the rules of a composite."""
from __future__ import annotations

import torch

from unitscope.hooks import LayerCapture
from unitscope.saliency.base import CHANNEL_REDUCTIONS, REDUCTIONS, Attribution, check_choice, per_target, reduce_map
from unitscope.saliency.lrp.composites import make_composite
from unitscope.saliency.lrp.propagation import Propagator, check_model
from unitscope.saliency.lrp.rules import ZBox


class LRP(Attribution):
    """Relevance of each input value for the logit of the target class.

    Args:
        model: a CNN of Conv2d, Linear, BatchNorm (right after a Conv2d/Linear: folded into it),
            ReLU/ReLU6, max/average/adaptive pooling, Flatten, Dropout (eval) modules, whose forward
            code may add branches (`out += identity`, `x + y`), take means and flatten/reshape. Any
            other module or function on the activations is refused with an error naming it.
        composite (str or Composite): the rules: "epsilon_plus_flat" (default), "epsilon_plus",
            "epsilon_alpha2_beta1", "epsilon_alpha2_beta1_flat", "epsilon_gamma_box" (z^B for pixels
            in [0, 1]), "deep_taylor" (z^B first, z+ everywhere else), or a Composite instance.
        preprocess: applied to x before the model; the relevance returned is that of the model's
            input values, one per pixel and channel of x. z^B bounds (ZBox low/high) are given for
            x (pixels) and mapped through preprocess (which must then work elementwise, e.g. the
            ImageNet normalization).
        output: only "logits": LRP explains a logit (the relevance at the top is the logit itself).
        reduce, channel: as VanillaGradient; defaults "signed", None (the raw (B, C, H, W) relevance).

    Returns float Tensor (B, C, H, W) (or reduced), with a T axis after B for (B, T) targets. With
    z+ / epsilon rules without biases (bias=False) the relevance of each image sums to its logit.
    """

    def __init__(self, model, composite="epsilon_plus_flat", *, reduce="signed", channel=None, output=None,
                 preprocess=None):
        if output not in (None, "logits"):
            raise ValueError(f"output must be 'logits' for LRP (it explains a logit), got {output!r}")
        super().__init__(model, output="logits", preprocess=preprocess)
        self.composite = make_composite(composite)
        self.reduce = check_choice(reduce, REDUCTIONS, "reduce")
        self.channel = check_choice(channel, CHANNEL_REDUCTIONS, "channel")
        check_model(model)  # refuse uncovered modules now, not at the first call

    def _model_space(self, x):
        """The composite with z^B bounds mapped from pixels to the model's input space."""
        comp = self.composite
        if self.preprocess is None or not isinstance(comp.first, ZBox):
            return comp
        box = comp.first
        one = torch.ones_like(x[:1])
        with torch.no_grad():
            lo = self.preprocess(one * torch.as_tensor(box.low, dtype=x.dtype, device=x.device))
            hi = self.preprocess(one * torch.as_tensor(box.high, dtype=x.dtype, device=x.device))
        mapped = type(comp).__new__(type(comp))
        mapped.__dict__.update(comp.__dict__)
        mapped.first = ZBox(torch.minimum(lo, hi), torch.maximum(lo, hi), box.stabilizer)
        return mapped

    def raw(self, x, target):
        """The relevance (B, C, H, W) of the model's input for target (B,)."""
        return self.relevances(x, target)[0]

    def relevances(self, x, target, layer=None):
        """(relevance of the model's input, relevance of `layer`'s output or None) for target (B,):
        the relevance arriving at the layer's output during the same backward pass."""
        with torch.no_grad():
            xin = self.preprocess(x) if self.preprocess is not None else x
        xin = xin.detach().requires_grad_(True)
        with torch.enable_grad():
            # the capture's hook runs after the Propagator's: it keeps the layer's propagated output
            with Propagator(self.model, self._model_space(x)), LayerCapture(self.model, layer or []) as cap:
                out = self.model(xin)
            if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"the model must output logits of shape (B, N) = ({x.shape[0]}, N), got {got}")
            self._check_target_range(out, target[:, None])
            t = target[:, None]
            R = torch.zeros_like(out).scatter(1, t, out.detach().gather(1, t))
            if layer is None:
                (rel,) = torch.autograd.grad(out, xin, R)
                return rel, None
            rel, rel_layer = torch.autograd.grad(out, (xin, cap.output), R)
        return rel, rel_layer

    def _attribute(self, x, targets):
        return per_target(lambda xx, t: reduce_map(self.raw(xx, t), self.reduce, self.channel), x, targets)
