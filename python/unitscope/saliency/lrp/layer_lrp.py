"""Layer LRP (Captum's LayerLRP): the relevance of a hidden layer's units for a logit, as it arrives
at the layer's output during the LRP backward pass of a composite."""
from __future__ import annotations

from unitscope.hooks import LayerCapture
from unitscope.saliency.base import per_target
from unitscope.saliency.lrp.lrp import LRP


class LayerLRP(LRP):
    """Relevance of each unit of `layer` (its output, (B, K, h, w)) for the logit of the target class.

    Args:
        model, composite, preprocess, output: as for LRP.
        layer (str or nn.Module): the layer ("name@k" for a module's k-th call); the relevance is
            that of the tensor the layer returns (a Conv2d's output before its BatchNorm and ReLU
            is the folded convolution's: BatchNorm is folded into it, so name the BatchNorm or the
            ReLU after it for the relevance of the normalized or rectified output).

    Returns float Tensor shaped like the layer's output, with a T axis after B for (B, T) targets;
    no reduction. Under rules that conserve relevance (z+ / epsilon without biases) each image's
    layer relevance sums to its logit, as its input relevance does.
    """

    def __init__(self, model, layer, composite="epsilon_plus_flat", *, output=None, preprocess=None):
        super().__init__(model, composite, output=output, preprocess=preprocess)
        self.layer_name = LayerCapture(model, layer).spec  # a bad layer fails here

    def _attribute(self, x, targets):
        return per_target(lambda xx, t: self.relevances(xx, t, self.layer_name)[1], x, targets)
